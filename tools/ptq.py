"""Post-training quantization of an mmpretrain/mmdet model with BitSplit.

Example::

    python tools/ptq.py configs/bitsplit/retinanet_r50_fpn_w4a8_coco.py \
        retinanet_r50_fpn_1x_coco.pth --work-dir work_dirs/ptq

The work dir is ``--work-dir``, else the config's ``work_dir`` (also from
``--cfg-options work_dir=...``), else ``work_dirs/<config name>``. It
receives ``<stem>_int.pth`` (the INT checkpoint), ``<stem>_quantized.py``
(the config that stock ``tools/test.py`` runs as it is), ``report.json``,
the log ``ptq_<timestamp>.log`` and the config as run, ``<config name>.py``.
``<stem>`` is the config name plus ``_w4a8`` (the bits of the run) unless
the name already contains that tag (``resnet18_w4a8_in1k`` stays as it is).
"""
import argparse
import os
import os.path as osp
import sys
import time
from typing import Optional

from mmengine.config import Config, DictAction
from mmengine.logging import MMLogger

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmquant.apis.ptq import run_ptq  # noqa: E402
from mmquant.fileio import write_text_atomic  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='BitSplit post-training quantization of an OpenMMLab '
        'model')
    parser.add_argument('config', help='the model config (with an optional '
                        '`quantizer` dict)')
    parser.add_argument('checkpoint', help='the float checkpoint')
    parser.add_argument('--work-dir', help='output folder (default: the '
                        "config's work_dir, else work_dirs/<config name>)")
    parser.add_argument('--w-bits', type=int, help='weight bits (2..8)')
    parser.add_argument('--a-bits', type=int, help='activation bits (2..8)')
    parser.add_argument('--no-act-quant', action='store_true',
                        help='keep activations float')
    parser.add_argument('--method', choices=['bitsplit', 'rtn'],
                        help='bitsplit (default) or the rtn baseline')
    parser.add_argument('--fast', action='store_true',
                        help='fast mode: one float pass instead of '
                        'error compensation')
    parser.add_argument('--calib-samples', type=int, default=256,
                        help='calibration images (default 256)')
    parser.add_argument('--calib-batch-size', type=int,
                        help='calibration batch size (default: the '
                        "dataloader's)")
    parser.add_argument('--no-eval', action='store_true',
                        help='do not evaluate float and quantized models')
    parser.add_argument('--eval-samples', type=int,
                        help='evaluate on the first N test samples only')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy')
    return parser.parse_args()


def resolve_work_dir(cfg: Config, work_dir: Optional[str],
                     config: str) -> str:
    """OpenMMLab's precedence: ``--work-dir``, then ``cfg.work_dir``, then
    ``work_dirs/<config name>``."""
    if work_dir is not None:
        return work_dir
    if cfg.get('work_dir', None) is not None:
        return cfg.work_dir
    return osp.join('work_dirs', osp.splitext(osp.basename(config))[0])


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    work_dir = resolve_work_dir(cfg, args.work_dir, args.config)
    cfg.work_dir = work_dir
    os.makedirs(work_dir, exist_ok=True)
    timestamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    log_file = osp.join(work_dir, f'ptq_{timestamp}.log')
    logger = MMLogger.get_instance(f'mmquant_ptq_{timestamp}',
                                   log_file=log_file, log_level='INFO')
    dumped = osp.join(work_dir, osp.basename(args.config))
    if osp.splitext(dumped)[1] != '.py':
        dumped = osp.splitext(dumped)[0] + '.py'
    write_text_atomic(dumped, cfg.pretty_text)
    logger.info(f'mmquant: config {args.config} (as run: {dumped}), log '
                f'{log_file}')
    overrides = {}
    if args.w_bits is not None:
        overrides['w_bits'] = args.w_bits
    if args.a_bits is not None:
        overrides['a_bits'] = args.a_bits
    if args.no_act_quant:
        overrides['a_bits'] = None
    if args.method is not None:
        overrides['type'] = dict(
            bitsplit='mmquant.BitSplitQuantizer',
            rtn='mmquant.RTNQuantizer')[args.method]
    if args.fast:
        overrides['error_compensation'] = False
    run_ptq(cfg, args.checkpoint, work_dir, overrides, args.calib_samples,
            args.calib_batch_size, not args.no_eval, args.eval_samples)


if __name__ == '__main__':
    main()
