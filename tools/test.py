"""Evaluate an mmquant INT checkpoint with the config's test loop.

Example::

    python tools/test.py configs/bitsplit/retinanet_r50_fpn_w4a8_coco.py \
        work_dirs/ptq/latest/retinanet_r50_fpn_w4a8_coco_int.pth

The config's ``model`` may be the float model (it is wrapped in
``mmquant.QuantizedModel`` here) or already an ``mmquant.QuantizedModel``.
This runs mmengine's own ``Runner.test()`` with the config's evaluator, the
same path as mmdet's or mmpretrain's ``tools/test.py``.

The config and the INT checkpoint are checked before the runner starts
(so a bad one leaves no folder behind). Exit status: 0 on success; 2 on a
user error (bad argument, missing or unreadable file, bad config or
checkpoint, full disk), reported on one line without a traceback
(``--debug`` or ``MMQUANT_DEBUG=1`` shows it); 1 with a traceback on an
internal error.
"""
import argparse
import os.path as osp
import sys
import traceback
from typing import Any, Dict, List, NoReturn, Optional

from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from mmquant.apis.ptq import (PTQInputError,
                              check_input_file, debug_requested,
                              is_quantized_model_cfg, load_config,
                              load_dataset, user_error_message)
from mmquant.checkpoint import load_container


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): The arguments (default:
            ``sys.argv[1:]``).

    Returns:
        argparse.Namespace: The arguments.
    """
    parser = _Parser(description='Evaluate an mmquant INT checkpoint')
    parser.add_argument('config', help='the model config')
    parser.add_argument('checkpoint', help='the INT checkpoint')
    parser.add_argument('--work-dir', help='folder for logs and results')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy')
    parser.add_argument('--debug', action='store_true',
                        help='show the traceback of user errors (also '
                        'MMQUANT_DEBUG=1)')
    # distributed (docs/distributed.md): imported here, not in the header
    from mmquant.apis.distributed import LAUNCHERS
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='evaluate on several processes '
                        '(tools/dist_test.sh, tools/slurm_test.sh)')
    parser.add_argument('--local_rank', '--local-rank', type=int,
                        default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_test_config(cfg: Config, checkpoint: str) -> Config:
    """Wrap the config's model in ``mmquant.QuantizedModel``.

    Args:
        cfg (Config): The config.
        checkpoint (str): The INT checkpoint.

    Returns:
        Config: The config to hand to ``Runner.from_cfg``.
    """
    model = cfg.model
    if not is_quantized_model_cfg(model):
        model = dict(type='mmquant.QuantizedModel', architecture=model)
    model['int_checkpoint'] = checkpoint
    cfg.model = model
    cfg.load_from = None
    custom = cfg.get('custom_imports', dict(imports=[]))
    if 'mmquant' not in custom.get('imports', []):
        custom = dict(custom, imports=list(custom.get('imports', [])) +
                      ['mmquant'])
        cfg.custom_imports = custom
    return cfg


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the test loop; returns the evaluator's metrics.

    Args:
        argv (list[str], optional): The arguments (default:
            ``sys.argv[1:]``).

    Returns:
        dict: The metrics.

    Raises:
        PTQInputError: If the config or checkpoint file is missing,
            unreadable or not a regular file, the config does not load, has
            no test dataloader and evaluator, or its test dataset cannot
            be built.
        CheckpointError: If the INT checkpoint does not load.
    """
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    check_input_file(args.checkpoint, 'INT checkpoint')
    load_container(args.checkpoint)  # refuse a bad file before the runner
    for key in ('test_dataloader', 'test_evaluator'):
        if not cfg.get(key):
            raise PTQInputError(f'config {args.config!r} has no {key}; add '
                                'it to evaluate')
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    load_dataset(cfg.test_dataloader.dataset, 'test')  # its data exist
    cfg.work_dir = args.work_dir or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg = build_test_config(cfg, args.checkpoint)
    if args.launcher != 'none':  # distributed: mmengine's test loop
        import os

        import torch

        from mmquant.apis.distributed import init_distributed
        os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
        init_distributed(args.launcher)  # gloo without CUDA
        cfg.launcher = args.launcher
        if not torch.cuda.is_available() and not cfg.get(
                'model_wrapper_cfg'):  # CPU: no device ids for DDP
            cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel',
                                         device_ids=None,
                                         broadcast_buffers=False)
    runner = Runner.from_cfg(cfg)
    return runner.test()


def cli(argv: Optional[List[str]] = None) -> int:
    """:func:`main` for the command line; returns the exit status.

    Args:
        argv (list[str], optional): The arguments (default:
            ``sys.argv[1:]``).

    Returns:
        int: 0 on success, 2 on a user error (one line on stderr).
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        main(argv)
    except Exception as err:
        message = user_error_message(err)
        if message is None:
            raise
        if debug_requested('--debug' in args):
            traceback.print_exc()
        print(f'test.py: error: {message}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    from mmquant.allocator import keep_freed_memory
    keep_freed_memory()  # a one-shot command: see mmquant/allocator.py
    sys.exit(cli())
