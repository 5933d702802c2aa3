"""Post-training quantization of an mmpretrain/mmdet model with BitSplit.

Example::

    python tools/ptq.py configs/bitsplit/retinanet_r50_fpn_w4a8_coco.py \
        retinanet_r50_fpn_1x_coco.pth --work-dir work_dirs/ptq

writes ``<work_dir>/<config>_w4a8_int.pth`` and ``<work_dir>/report.json``.
"""
import argparse
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.logging import MMLogger

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmquant.apis.ptq import run_ptq  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='BitSplit post-training quantization of an OpenMMLab '
        'model')
    parser.add_argument('config', help='the model config (with an optional '
                        '`quantizer` dict)')
    parser.add_argument('checkpoint', help='the float checkpoint')
    parser.add_argument('--work-dir', help='output folder (default: '
                        'work_dirs/<config name>)')
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


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    work_dir = args.work_dir or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    MMLogger.get_instance('mmquant', log_level='INFO')
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
