"""Post-training quantization of an mmpretrain/mmdet model with BitSplit.

Example::

    python tools/ptq.py configs/bitsplit/retinanet_r50_fpn_w4a8_coco.py \
        retinanet_r50_fpn_1x_coco.pth --work-dir work_dirs/ptq

The work dir is ``--work-dir``, else the config's ``work_dir`` (also from
``--cfg-options work_dir=...``), else ``work_dirs/<config name>``. Every
run writes into its own folder there, ``<work dir>/<timestamp>/``
(``YYYYmmdd_HHMMSS``, with ``_1``, ``_2`` ... appended when another run
took the name), so runs sharing a work dir never overwrite each other. It
receives ``<stem>_int.pth`` (the INT checkpoint), ``<stem>_quantized.py``
(the config that stock ``tools/test.py`` runs as it is), ``report.json``,
the log ``ptq_<timestamp>.log`` and the config as run, ``<config
name>.py``. ``<work dir>/latest`` is a symbolic link to the folder of the
last run that wrote its INT checkpoint (where symbolic links cannot be
made, a text file holding the folder's name). ``<stem>`` is the config
name plus ``_w4a8`` (the bits of the run) unless the name already contains
that tag (``resnet18_w4a8_in1k`` stays as it is).

Everything is checked before calibration starts; the INT checkpoint and
the report are written before the evaluation. Exit status: 0 on success;
1 when the evaluation failed (the INT checkpoint and report are kept) or
on an internal error (with its traceback); 2 on a user error (bad
argument, missing or unreadable file, bad config or checkpoint, unusable
work dir, full disk), reported on one line without a traceback
(``--debug`` or ``MMQUANT_DEBUG=1`` shows it). A run that fails before
writing its INT checkpoint leaves no empty folder behind.

Resume: while it quantizes, a run keeps a journal in ``<run
folder>/resume/`` (one atomically written file per solved layer, and a
fingerprint of the config as run, the quantizer settings, the float
checkpoint and the calibration set), removed once the INT checkpoint is
written. A run that was killed is continued with the same command plus
``--resume`` (the newest run folder of the work dir that still holds a
journal) or ``--resume RUN_DIR``: solved layers are not solved again and
the INT checkpoint is byte-identical to that of an uninterrupted run.
Resume is refused (exit 2) when the config, the quantizer settings, the
float checkpoint or the calibration set differ from the interrupted run.
"""
import argparse
import os
import os.path as osp
import secrets
import shutil
import sys
import time
import traceback
from typing import Any, Dict, List, NoReturn, Optional

from mmengine.config import Config, DictAction
from mmengine.logging import MMLogger

from mmquant.apis.ptq import (EvaluationError, PTQInputError,
                              check_input_file, debug_requested,
                              load_config, prepare_work_dir,
                              remove_empty_dirs, run_ptq,
                              user_error_message)
from mmquant.checkpoint.int_model import INT_SUFFIX
from mmquant.fileio import write_text_atomic
from mmquant.quantization.config import ALLOCATION_METRICS
from mmquant.quantization.journal import FINGERPRINT
from mmquant.quantization.methods import WEIGHT_METHODS
from mmquant.quantizers import quantizer_for

#: The name of the pointer to the last finished run in a work dir.
LATEST = 'latest'
#: The resume journal's folder in a run folder.
RESUME = 'resume'


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def _count(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(
            f'must be a whole number >= 1, got {text!r}')
    return value


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): The arguments (default:
            ``sys.argv[1:]``).

    Returns:
        argparse.Namespace: The arguments.
    """
    parser = _Parser(
        description='BitSplit post-training quantization of an OpenMMLab '
        'model')
    parser.add_argument('config', help='the model config (with an optional '
                        '`quantizer` dict)')
    parser.add_argument('checkpoint', help='the float checkpoint')
    parser.add_argument('--work-dir', help='output folder (default: the '
                        "config's work_dir, else work_dirs/<config name>); "
                        'each run writes into <work dir>/<timestamp>/')
    parser.add_argument('--w-bits', type=int, help='weight bits (2..8)')
    parser.add_argument('--a-bits', type=int, help='activation bits (2..8)')
    parser.add_argument('--no-act-quant', action='store_true',
                        help='keep activations float')
    parser.add_argument('--method', choices=sorted(WEIGHT_METHODS),
                        help='the weight method: bitsplit (default) or the '
                        'rtn baseline (mmquant.quantization.methods)')
    parser.add_argument('--fast', action='store_true',
                        help='fast mode: one float pass instead of '
                        'error compensation')
    parser.add_argument('--sensitivity', action='store_true',
                        help="also record every layer's error at W2, W3, "
                        'W4 and W8 (the report and its figure)')
    parser.add_argument('--target-bits', type=float, metavar='BITS',
                        help='mixed precision: per-layer weight widths '
                        'with at most this average bits per weight '
                        '(docs/analysis.md)')
    parser.add_argument('--allocation-metric', choices=ALLOCATION_METRICS,
                        help="what --target-bits minimises: 'network' "
                        "(default: each layer's effect on the outputs) or "
                        "'layer' (each layer's own output error)")
    parser.add_argument('--calib-samples', type=_count, default=256,
                        help='calibration images (default 256)')
    parser.add_argument('--calib-batch-size', type=_count,
                        help='calibration batch size (default: the '
                        "dataloader's)")
    parser.add_argument('--no-eval', action='store_true',
                        help='do not evaluate float and quantized models')
    parser.add_argument('--eval-samples', type=_count,
                        help='evaluate on the first N test samples only')
    parser.add_argument('--device', default=None,
                        help="where to run: 'cpu', 'cuda' or 'cuda:N' "
                        "(default: 'cuda' when available, else 'cpu')")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy')
    parser.add_argument('--resume', nargs='?', const='', metavar='RUN_DIR',
                        help='continue an interrupted run: RUN_DIR, or '
                        'the newest run folder of the work dir that '
                        'still holds a resume journal')
    parser.add_argument('--debug', action='store_true',
                        help='show the traceback of user errors (also '
                        'MMQUANT_DEBUG=1)')
    # distributed (docs/distributed.md): imported here, not in the header
    from mmquant.apis.distributed import LAUNCHERS
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='calibrate on several processes '
                        '(tools/dist_ptq.sh, tools/slurm_ptq.sh; '
                        'docs/distributed.md)')
    parser.add_argument('--local_rank', '--local-rank', type=int,
                        default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.launcher != 'none' and args.resume is not None:
        parser.error('--resume is not supported with --launcher')
    return args


def quantizer_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """The quantizer settings the command line overrides.

    Args:
        args (argparse.Namespace): The parsed arguments.

    Returns:
        dict: For :func:`~mmquant.apis.ptq.build_quantizer`.
    """
    overrides: Dict[str, Any] = {}
    if args.w_bits is not None:
        overrides['w_bits'] = args.w_bits
    if args.a_bits is not None:
        overrides['a_bits'] = args.a_bits
    if args.no_act_quant:
        overrides['a_bits'] = None
    if args.method is not None:
        overrides.update(quantizer_for(args.method))
    if args.fast:
        overrides['error_compensation'] = False
    if args.sensitivity:
        overrides['sensitivity'] = True
    if args.target_bits is not None:
        overrides['target_bits'] = args.target_bits
    if args.allocation_metric is not None:
        overrides['allocation_metric'] = args.allocation_metric
    return overrides


def other_rank(args: argparse.Namespace) -> int:
    """A rank other than 0 of a distributed run: calibrate its shard.

    Args:
        args (argparse.Namespace): The parsed arguments.

    Returns:
        int: 0 on success, 2 on a user error, 1 on another error (rank 0
        writes the outputs and reports the run).
    """
    import torch.distributed as dist

    from mmquant.apis.distributed import calibrate_shard, rank_guard
    try:
        with rank_guard():
            calibrate_shard(load_config(args.config, args.cfg_options),
                            args.checkpoint, quantizer_overrides(args),
                            args.calib_samples, args.calib_batch_size,
                            args.device)
    except Exception as err:  # noqa: BLE001 - one line per rank
        message = user_error_message(err)
        if debug_requested(args.debug) or message is None:
            traceback.print_exc()
        print(f'ptq.py (rank {dist.get_rank()}): error: '
              f'{message or err}', file=sys.stderr)
        return 1 if message is None else 2
    return 0


def resolve_work_dir(cfg: Config, work_dir: Optional[str],
                     config: str) -> str:
    """OpenMMLab's precedence: ``--work-dir``, then ``cfg.work_dir``, then
    ``work_dirs/<config name>``.

    Args:
        cfg (Config): The config.
        work_dir (str, optional): ``--work-dir``.
        config (str): The config file.

    Returns:
        str: The work dir.
    """
    if work_dir is not None:
        return work_dir
    if cfg.get('work_dir', None) is not None:
        return cfg.work_dir
    return osp.join('work_dirs', osp.splitext(osp.basename(config))[0])


def make_run_dir(work_dir: str, timestamp: str) -> str:
    """Create a new run folder ``<work_dir>/<timestamp>`` exclusively.

    When a concurrent run already took the name, ``_1``, ``_2`` ... is
    appended.

    Args:
        work_dir (str): An existing folder.
        timestamp (str): ``YYYYmmdd_HHMMSS``.

    Returns:
        str: The new, empty folder.
    """
    os.makedirs(work_dir, exist_ok=True)  # (if a failed run removed it)
    for i in range(1000):
        name = timestamp if i == 0 else f'{timestamp}_{i}'
        path = osp.join(work_dir, name)
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise PTQInputError(f'work dir {work_dir!r} already has 1000 run '
                        f'folders named {timestamp}*; choose another '
                        '--work-dir')


def update_latest(work_dir: str, run_dir: str) -> str:
    """Point ``<work_dir>/latest`` at ``run_dir``, atomically.

    A relative symbolic link, swapped in with :func:`os.replace`; where
    symbolic links cannot be made, a text file holding the folder's name.

    Args:
        work_dir (str): The work dir.
        run_dir (str): A folder in it.

    Returns:
        str: The pointer's path.
    """
    link = osp.join(work_dir, LATEST)
    name = osp.basename(run_dir)
    tmp = osp.join(work_dir, f'.{LATEST}.{secrets.token_hex(6)}.tmp')
    try:
        os.symlink(name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        if osp.lexists(tmp):
            os.unlink(tmp)
        write_text_atomic(link, name + '\n')
    return link


def find_resume_dir(work_dir: str, run_dir: str) -> str:
    """The run folder ``--resume`` continues.

    Args:
        work_dir (str): The work dir.
        run_dir (str): ``--resume``'s argument; ``''`` picks the newest
            run folder (by name, i.e. by timestamp) of ``work_dir`` that
            holds a resume journal.

    Returns:
        str: The run folder.

    Raises:
        PTQInputError: If there is no such folder, or the folder has no
            journal (never started quantizing, or already finished).
    """
    if not run_dir:
        names = sorted(
            (n for n in os.listdir(work_dir) if n != LATEST
             and osp.isfile(osp.join(work_dir, n, RESUME, FINGERPRINT)))
            if osp.isdir(work_dir) else [])
        if not names:
            raise PTQInputError(
                f'--resume: work dir {work_dir!r} has no interrupted run '
                f'(no <run folder>/{RESUME}/{FINGERPRINT}); give the run '
                'folder as --resume RUN_DIR or start a new run')
        return osp.join(work_dir, names[-1])
    if not osp.isdir(run_dir):
        raise PTQInputError(f'--resume: run folder {run_dir!r} does not '
                            'exist')
    if not osp.isfile(osp.join(run_dir, RESUME, FINGERPRINT)):
        done = any(n.endswith(INT_SUFFIX) for n in os.listdir(run_dir))
        why = ('it finished (its INT checkpoint is written)' if done else
               'it has no resume journal (it stopped before calibration)')
        raise PTQInputError(f'--resume: cannot resume {run_dir!r}: {why}; '
                            'start a new run without --resume')
    return run_dir


def _recorded_work_dir(run_dir: str, config: str, work_dir: str) -> str:
    """The ``work_dir`` of the config the run in ``run_dir`` dumped, if
    it names the same folder as ``work_dir``; else ``work_dir``."""
    dumped = osp.splitext(osp.join(run_dir, osp.basename(config)))[0]
    try:
        recorded = Config.fromfile(dumped + '.py').get('work_dir')
    except Exception:  # noqa: BLE001 - the fingerprint will tell
        return work_dir
    if isinstance(recorded, str) and osp.realpath(
            recorded) == osp.realpath(work_dir):
        return recorded
    return work_dir


def _remove_run_dir(run_dir: str, files: List[str],
                    resumed: bool = False) -> None:
    """Remove the files a run that failed with a user error wrote into
    its folder, its resume journal included unless the run resumed, then
    the folder if that leaves it empty."""
    if not resumed:
        shutil.rmtree(osp.join(run_dir, RESUME), ignore_errors=True)
    for path in files:
        try:
            os.unlink(path)
        except OSError:
            pass
    remove_empty_dirs([run_dir])


def run(args: argparse.Namespace, state: Dict[str, Any]) -> Dict[str, Any]:
    """Check the inputs, make the run folder, run :func:`run_ptq`.

    Args:
        args (argparse.Namespace): The parsed arguments.
        state (dict): Filled in as the run goes: ``created`` (folders made
            for the work dir), ``run_dir``, ``files`` (what was written
            into it before the INT checkpoint) and ``work_dir``.

    Returns:
        dict: The report.
    """
    cfg = load_config(args.config, args.cfg_options)
    check_input_file(args.checkpoint, 'float checkpoint')
    resume = args.resume is not None
    state['resumed'] = resume
    if resume and args.resume:
        work_dir = osp.dirname(osp.normpath(args.resume)) or '.'
        if args.work_dir is not None and osp.realpath(
                args.work_dir) != osp.realpath(work_dir):
            raise PTQInputError(
                f'--resume {args.resume!r} lies in {work_dir!r}, not in '
                f'--work-dir {args.work_dir!r}; drop one of them')
    else:
        work_dir = resolve_work_dir(cfg, args.work_dir, args.config)
    cfg.work_dir = work_dir
    state['work_dir'] = work_dir
    timestamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    if resume:
        run_dir = find_resume_dir(work_dir, args.resume)
        state['created'] = []
        # the work dir as the interrupted run spelled it (relative or
        # not): it is part of the config as run
        work_dir = _recorded_work_dir(run_dir, args.config, work_dir)
        cfg.work_dir = work_dir
        state['work_dir'] = work_dir
    else:
        state['created'] = prepare_work_dir(work_dir)
        run_dir = make_run_dir(work_dir, timestamp)
    state['run_dir'] = run_dir
    run_name = osp.basename(run_dir)
    log_name = f'ptq_{run_name}_resume_{timestamp}.log' if resume else \
        f'ptq_{run_name}.log'
    log_file = osp.join(run_dir, log_name)
    state['files'] = [log_file]
    logger = MMLogger.get_instance(
        f'mmquant_ptq_{run_name}_{secrets.token_hex(4)}',
        log_file=log_file, log_level='INFO')
    dumped = osp.join(run_dir, osp.basename(args.config))
    if osp.splitext(dumped)[1] != '.py':
        dumped = osp.splitext(dumped)[0] + '.py'
    if not resume:  # on resume, the fingerprint checks it is the same
        state['files'].append(dumped)
        write_text_atomic(dumped, cfg.pretty_text)
    logger.info(f'mmquant: config {args.config} (as run: {dumped}), log '
                f'{log_file}, run folder {run_dir}')
    overrides = quantizer_overrides(args)
    try:
        report = run_ptq(cfg, args.checkpoint, run_dir, overrides,
                         args.calib_samples, args.calib_batch_size,
                         not args.no_eval, args.eval_samples,
                         journal_dir=osp.join(run_dir, RESUME),
                         resume=resume, device=args.device)
    except EvaluationError:
        update_latest(work_dir, run_dir)
        raise
    update_latest(work_dir, run_dir)
    return report


def _int_written(state: Dict[str, Any]) -> bool:
    run_dir = state.get('run_dir')
    return bool(run_dir) and osp.isdir(run_dir) and any(
        name.endswith(INT_SUFFIX) for name in os.listdir(run_dir))


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``tools/ptq.py``; returns the exit status.

    Args:
        argv (list[str], optional): The arguments (default:
            ``sys.argv[1:]``).

    Returns:
        int: 0 on success, 1 if the evaluation failed (the INT checkpoint
        is kept), 2 on a user error.
    """
    from mmquant.apis.distributed import init_distributed, rank_guard
    args = parse_args(argv)
    if args.launcher != 'none':  # distributed: rank 0 runs the tool
        os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
        if init_distributed(args.launcher) != 0:
            return other_rank(args)
    debug = debug_requested(args.debug)
    prog = osp.basename(sys.argv[0]) if argv is None else 'ptq.py'
    state: Dict[str, Any] = {}
    try:
        with rank_guard():  # distributed: an early error stops all ranks
            run(args, state)
    except EvaluationError as err:
        if debug:
            traceback.print_exc()
        print(f'{prog}: error: {err}', file=sys.stderr)
        return 1
    except BaseException as err:
        message = user_error_message(err) if isinstance(
            err, Exception) else None
        if not _int_written(state):
            if message is not None and state.get('run_dir'):
                _remove_run_dir(state['run_dir'], state.get('files', []),
                                state.get('resumed', False))
            remove_empty_dirs(state.get('created', []))
        if message is None:
            raise
        if state.get('run_dir') and osp.isdir(state['run_dir']):
            MMLogger.get_current_instance().error(f'mmquant: {message}')
        if debug:
            traceback.print_exc()
        print(f'{prog}: error: {message}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    from mmquant.allocator import keep_freed_memory
    keep_freed_memory()  # a one-shot command: see mmquant/allocator.py
    sys.exit(main())
