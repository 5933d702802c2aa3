"""Time W4A8 PTQ of an mmpretrain ResNet-18 at 224 px, both modes.

The speed target of mmquant on a 2-core CPU: 256 calibration images, under
10 minutes in error-compensated mode and under 3 minutes in fast mode, with
the report showing where the time went. The model is mmpretrain's own
``resnet18_8xb32_in1k`` architecture with its own random initialisation
(ImageNet checkpoints are not reachable offline): the layer shapes, hence
the statistics and the solver's work per round, are those of the real
model; the number of solver rounds may differ from trained weights. The
images are smooth random images. Run::

    python tools/benchmark_ptq.py [--modes fast ec] [--calib-samples 256]
        [--json out.json]
"""
import argparse
import json
import os.path as osp
import platform
import sys
import time

import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import init_default_scope

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmquant  # noqa: E402
from mmquant.apis.ptq import float_model_cfg  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config',
                        default='configs/bitsplit/resnet18_w4a8_in1k.py')
    parser.add_argument('--modes', nargs='+', default=['fast', 'ec'],
                        choices=['fast', 'ec'])
    parser.add_argument('--calib-samples', type=int, default=256)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--w-bits', type=int, default=4)
    parser.add_argument('--a-bits', type=int, default=8)
    parser.add_argument('--json', help='write the results here')
    return parser.parse_args()


def build_model(config: str) -> torch.nn.Module:
    """The config's architecture with seeded random weights."""
    cfg = Config.fromfile(config)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    torch.manual_seed(0)
    model = ROOT_MODELS.build(float_model_cfg(cfg))
    return model.eval()


def calib_batches(n: int, bs: int, size: int) -> list:
    """Smooth random images, already normalised like the preprocessor."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for start in range(0, n, bs):
        x = torch.randn(min(bs, n - start), 3, size // 4, size // 4,
                        generator=gen)
        out.append(F.interpolate(x, size=(size, size), mode='bilinear',
                                 align_corners=False))
    return out


def main() -> None:
    args = parse_args()
    model = build_model(args.config)
    batches = calib_batches(args.calib_samples, args.batch_size, args.size)
    results = dict(
        machine=f'{platform.machine()}, {torch.get_num_threads()} threads, '
        f'torch {torch.__version__}',
        config=args.config,
        calib_samples=args.calib_samples,
        size=args.size,
        runs={})
    for mode in args.modes:
        cfg = mmquant.QuantConfig(
            w_bits=args.w_bits,
            a_bits=args.a_bits,
            error_compensation=(mode == 'ec'))
        t0 = time.perf_counter()
        _, report = mmquant.quantize(
            model, batches, cfg,
            forward_fn=lambda m, x: m(x, mode='tensor'))
        wall = time.perf_counter() - t0
        layers = report.quantized_layers
        results['runs'][report.mode] = dict(
            wall_s=round(wall, 1),
            timing=report.timing,
            layers=len(layers),
            mean_rel_error=sum(lay.rel_error for lay in layers) /
            len(layers),
            mean_rel_error_rtn=sum(lay.rel_error_rtn
                                   for lay in layers) / len(layers))
        print(f'{report.mode}: {wall:.1f} s; {report.timing}')
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    main()
