"""Time W4A8 PTQ of a ResNet-50 on one GPU, in both modes, per phase.

The check of issue 15 part 3: torchvision ResNet-50 (seeded random
weights: the layer shapes set the cost), 512 smooth random images at
224 px in batches of 32, W4A8, fast and error-compensated mode, the whole
pipeline (statistics, solver, activation fitting, swap) on the device.
It prints the device name, each mode's wall time, ``report.timing`` (per
phase) and the peak GPU memory, and ends with the fraction of integer
weights the two modes share (a sanity line, not a target). Target: the
whole script under 5 minutes on one GPU. Run::

    python tools/analysis_tools/gpu_check.py [--device cuda]
        [--images 512] [--size 224] [--json out.json]

A CPU dry run with tiny sizes checks the script itself::

    python tools/analysis_tools/gpu_check.py --images 8 --size 64 \\
        --batch-size 4 --device cpu
"""
import argparse
import json
import platform
import time
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

import mmquant
from mmquant.nn import QuantizedLayer


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command-line arguments.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default=None,
                        help="torch device (default: 'cuda' when "
                        "available, else 'cpu')")
    parser.add_argument('--images', type=int, default=512)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--w-bits', type=int, default=4)
    parser.add_argument('--a-bits', type=int, default=8)
    parser.add_argument('--modes', nargs='+', default=['fast', 'ec'],
                        choices=['fast', 'ec'])
    parser.add_argument('--json', help='write the results here')
    args = parser.parse_args(argv)
    for name in ('images', 'size', 'batch_size'):
        if getattr(args, name) <= 0:
            parser.error(f'--{name.replace("_", "-")} must be positive')
    if args.size < 32:
        parser.error('--size must be at least 32 (ResNet-50 downsamples '
                     'by 32)')
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    dev = torch.device(args.device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available; '
                     'use --device cpu for a dry run')
    return args


def calib_batches(n: int, bs: int, size: int,
                  device: torch.device) -> List[torch.Tensor]:
    """Smooth random images (drawn on the CPU, seeded), on ``device``.

    Args:
        n: Images.
        bs: Batch size.
        size: Height and width.
        device: Where the batches go.

    Returns:
        list: The batches.
    """
    gen = torch.Generator().manual_seed(0)
    out = []
    for start in range(0, n, bs):
        x = torch.randn(min(bs, n - start), 3, size // 4, size // 4,
                        generator=gen)
        x = F.interpolate(x, size=(size, size), mode='bilinear',
                          align_corners=False)
        out.append(x.to(device))
    return out


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run_mode(args: argparse.Namespace, mode: str
             ) -> Dict[str, Any]:
    """Quantize a fresh seeded ResNet-50 once in ``mode``.

    Args:
        args: The parsed arguments.
        mode: ``'fast'`` or ``'ec'``.

    Returns:
        dict: Wall time, per-phase timing, peak GPU memory, the integer
        weights (CPU) and where the quantized layers ended up.
    """
    import torchvision
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval().to(device)
    batches = calib_batches(args.images, args.batch_size, args.size,
                            device)
    cfg = mmquant.QuantConfig(w_bits=args.w_bits, a_bits=args.a_bits,
                              error_compensation=(mode == 'ec'))
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    qmodel, report = mmquant.quantize(model, batches, cfg)
    _sync(device)
    wall = time.perf_counter() - t0
    qlayers = {n: m for n, m in qmodel.named_modules()
               if isinstance(m, QuantizedLayer)}
    devices = sorted({str(t.device) for m in qlayers.values()
                      for t in m.buffers()})
    return dict(
        wall_s=round(wall, 1),
        timing={k: round(v, 2) for k, v in report.timing.items()},
        layers=len(qlayers),
        buffer_devices=devices,
        peak_gpu_mib=(round(torch.cuda.max_memory_allocated(device)
                            / 2**20, 1) if device.type == 'cuda' else None),
        qweight={n: m.qweight.cpu() for n, m in qlayers.items()})


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the check and print (and optionally write) the results.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        dict: The results.
    """
    args = parse_args(argv)
    device = torch.device(args.device)
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda'
            else f'CPU ({platform.machine()}, {torch.get_num_threads()} '
            'thread(s))')
    results: Dict[str, Any] = dict(
        device=name, torch=torch.__version__, model='torchvision resnet50',
        images=args.images, size=args.size, batch_size=args.batch_size,
        w_bits=args.w_bits, a_bits=args.a_bits, runs={})
    print(f'gpu_check: {name}, {args.images} images at {args.size} px, '
          f'W{args.w_bits}A{args.a_bits}', flush=True)
    t_all = time.perf_counter()
    ints = {}
    for mode in args.modes:
        run = run_mode(args, mode)
        ints[mode] = run.pop('qweight')
        results['runs'][mode] = run
        print(f'{mode}: {run["wall_s"]} s, {run["layers"]} layers on '
              f'{run["buffer_devices"]}, peak GPU memory '
              f'{run["peak_gpu_mib"]} MiB; phases {run["timing"]}',
              flush=True)
    if len(ints) == 2:
        same = total = 0
        for key, q in ints['fast'].items():
            same += int((q == ints['ec'][key]).sum())
            total += q.numel()
        results['fast_ec_same_integers'] = round(same / total, 4)
        print(f'integers shared by fast and ec: {same / total:.1%}')
    results['total_s'] = round(time.perf_counter() - t_all, 1)
    print(f'total: {results["total_s"]} s (target: under 300 s on one '
          'GPU)')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
