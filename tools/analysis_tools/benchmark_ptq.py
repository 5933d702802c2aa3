"""Time W4A8 PTQ of an mmpretrain ResNet-18 at 224 px, in each mode.

The speed target of mmquant on a 2-core CPU: 256 calibration images, under
10 minutes in error-compensated mode and under 3 minutes in fast mode, with
the report showing where the time went. The model is mmpretrain's own
``resnet18_8xb32_in1k`` architecture with its own random initialisation
(ImageNet checkpoints are not reachable offline): the layer shapes, hence
the statistics and the solver's work per round, are those of the real
model; the number of solver rounds may differ from trained weights.
``--model`` picks a torchvision architecture instead (``resnet18``,
``resnet50``, ``mobilenet_v2``; random weights, seeded). The images are
smooth random images.

Modes: ``fast``, ``ec`` (error-compensated as configured by default: the
one pass, then replays from cached module boundaries), ``ec-replay``
(error-compensated with ``one_pass=False``: every layer replayed from
cached module boundaries) and ``ec-full`` (error-compensated with
``replay_cache_bytes=0``: every layer's pass starts at the network input,
as before both). Each mode runs in its own process, so the peak resident
memory printed is that run's; the process keeps freed memory for reuse
as ``tools/ptq.py`` does (``--allocator default``: glibc's defaults;
see :mod:`mmquant.allocator`), and its page faults and system time are
printed. Run::

    python tools/analysis_tools/benchmark_ptq.py [--modes fast ec ec-full]
        [--model resnet18] [--calib-samples 256] [--json out.json]
"""
import argparse
import json
import multiprocessing
import platform
import resource
import time
from typing import Any, Dict

import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import init_default_scope

import mmquant
from mmquant.allocator import keep_freed_memory
from mmquant.apis.ptq import float_model_cfg


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config',
                        default='configs/bitsplit/resnet18_w4a8_in1k.py')
    parser.add_argument('--model', choices=sorted(TORCHVISION),
                        help='a torchvision architecture (random weights) '
                        'instead of --config')
    parser.add_argument('--modes', nargs='+', default=['fast', 'ec'],
                        choices=sorted(MODES))
    parser.add_argument('--calib-samples', type=int, default=256)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--w-bits', type=int, default=4)
    parser.add_argument('--a-bits', type=int, default=8)
    parser.add_argument('--threads', type=int,
                        default=torch.get_num_threads(),
                        help='torch threads of each run')
    parser.add_argument('--allocator', choices=['keep', 'default'],
                        default='keep', help="'keep': glibc keeps freed "
                        'memory for reuse, as tools/ptq.py does '
                        "(mmquant/allocator.py); 'default': glibc's "
                        'defaults')
    parser.add_argument('--json', help='write the results here')
    return parser.parse_args()


#: ``--modes``: the config of each beside the bits.
MODES = {
    'fast': dict(error_compensation=False),
    'ec': dict(),
    'ec-replay': dict(one_pass=False),
    'ec-full': dict(replay_cache_bytes=0),
}

#: torchvision architectures of ``--model``.
TORCHVISION = ('mobilenet_v2', 'resnet18', 'resnet50')


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


def run_mode(args: argparse.Namespace, mode: str) -> Dict[str, Any]:
    """Quantize once in ``mode``; meant to run in a fresh process."""
    torch.set_num_threads(args.threads)
    kept = args.allocator == 'keep' and keep_freed_memory()
    if args.model:
        import torchvision
        torch.manual_seed(0)
        model = getattr(torchvision.models, args.model)().eval()
        forward_fn = None
    else:
        model = build_model(args.config)
        forward_fn = lambda m, x: m(x, mode='tensor')  # noqa: E731
    batches = calib_batches(args.calib_samples, args.batch_size, args.size)
    cfg = mmquant.QuantConfig(
        w_bits=args.w_bits,
        a_bits=args.a_bits,
        **MODES[mode])
    t0 = time.perf_counter()
    _, report = mmquant.quantize(model, batches, cfg,
                                 forward_fn=forward_fn)
    wall = time.perf_counter() - t0
    used = resource.getrusage(resource.RUSAGE_SELF)
    layers = report.quantized_layers
    return dict(
        wall_s=round(wall, 1),
        timing=report.timing,
        layers=len(layers),
        mean_rel_error=sum(lay.rel_error for lay in layers) / len(layers),
        mean_rel_error_rtn=sum(lay.rel_error_rtn
                               for lay in layers) / len(layers),
        # Linux: kilobytes
        peak_rss_mib=round(used.ru_maxrss / 1024, 1),
        allocator='keep freed memory' if kept else 'default',
        page_faults=used.ru_minflt,
        system_s=round(used.ru_stime, 1),
        replay_cache_peak_mib=round(
            report.replay.get('cache_peak_bytes', 0) / 2**20, 1),
        layers_in_one_pass=report.replay.get('one_pass'),
        one_pass_estimated_mib=round(
            report.replay.get('one_pass_estimated_bytes', 0) / 2**20, 1),
        layers_from_module=report.replay.get('from_module'),
        layers_from_input=report.replay.get('from_input'))


def main() -> None:
    args = parse_args()
    results = dict(
        machine=f'{platform.machine()}, {args.threads} thread(s), '
        f'torch {torch.__version__}',
        model=args.model or args.config,
        calib_samples=args.calib_samples,
        size=args.size,
        runs={})
    ctx = multiprocessing.get_context('spawn')
    for mode in args.modes:
        with ctx.Pool(1) as pool:
            run = pool.apply(run_mode, (args, mode))
        results['runs'][mode] = run
        print(f'{mode}: {run["wall_s"]} s, peak RSS '
              f'{run["peak_rss_mib"]} MiB (replay cache '
              f'{run["replay_cache_peak_mib"]} MiB), {run["page_faults"]} '
              f'page faults, {run["system_s"]} s system time; '
              f'{run["timing"]}',
              flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    main()
