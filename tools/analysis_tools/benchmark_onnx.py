"""onnxruntime latency, file size and top-1 of float vs QDQ ONNX models.

For one classifier config: the float model and each given INT checkpoint
are exported to ONNX (the data preprocessor's normalization inside), then

* the file size of each ``.onnx``;
* onnxruntime CPU latency at each batch size: the median of ``--repeats``
  timed runs after ``--warmup`` untimed ones, on one random batch, all
  sessions timed round-robin (one run each per round) so that the load
  of other jobs falls on all of them alike;
* top-1 on the config's whole test set of each ONNX model, next to the
  top-1 of the PyTorch model (``QuantizedLayer``\\ s; the metric of
  ``tools/test.py``), and the number of test images whose prediction
  differs between the two;

latency and top-1 of a QDQ model in each onnxruntime mode of
:func:`mmquant.deploy.ort_session` (``exact``, ``ort-defaults``,
``folded``).

Example (INT checkpoints from ``tools/analysis_tools/benchmark.py
configs/benchmarks/fmnist_offline.py``)::

    python tools/analysis_tools/benchmark_onnx.py \\
        configs/fmnist/resnet18-w16_fmnist.py \\
        checkpoints/resnet18-w16_fmnist.pth \\
        --int W8A8=work_dirs/benchmark/ResNet-18_16_ch/bitsplit_w8a8_int.pth \\
        --int W4A8=work_dirs/benchmark/ResNet-18_16_ch/bitsplit_w4a8_int.pth \\
        --shape 1 28 28 --work-dir work_dirs/onnx_bench/resnet18

Writes ``<work-dir>/results.json`` and ``results.md`` and prints the
table.
"""
import argparse
import json
import os
import os.path as osp
import platform
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Tuple


import numpy as np
import torch
from mmengine.config import Config


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; ``None`` reads
            ``sys.argv``.

    Returns:
        argparse.Namespace: The options.
    """
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the classifier config')
    parser.add_argument('checkpoint', help='the float checkpoint')
    parser.add_argument('--int', action='append', default=[],
                        metavar='LABEL=PATH',
                        help='an INT checkpoint and its label (repeat)')
    parser.add_argument('--shape', type=int, nargs=3, required=True,
                        metavar=('C', 'H', 'W'),
                        help='image shape as the test pipeline packs it')
    parser.add_argument('--batch', type=int, nargs='+', default=[1, 32])
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=50)
    parser.add_argument('--threads', type=int, default=1,
                        help='onnxruntime intra-op threads (default 1)')
    parser.add_argument('--max-images', type=int, default=None,
                        help='evaluate on the first N test images only')
    parser.add_argument('--work-dir', required=True)
    args = parser.parse_args(argv)
    for item in args.int:
        if '=' not in item:
            parser.error(f'--int takes LABEL=PATH, got {item!r}')
    return args


def _latencies(sessions: List[Any], shape: Tuple[int, ...], warmup: int,
               repeats: int) -> List[float]:
    """Median seconds of one ``run`` of each session on one random batch.

    The sessions are timed round-robin (one run of each per round), so
    that the load of other jobs on the machine falls on all of them alike.
    """
    x = (np.random.default_rng(0).random(shape) * 255).astype(np.float32)
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    for _ in range(warmup):
        for sess, feed in zip(sessions, feeds):
            sess.run(None, feed)
    times: List[List[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for i, (sess, feed) in enumerate(zip(sessions, feeds)):
            start = time.perf_counter()
            sess.run(None, feed)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _test_batches(cfg: Config, max_images: Optional[int]) -> List[Any]:
    """``(pixels (N, C, H, W) float32, labels (N,))`` of the test set."""
    from mmengine.runner import Runner
    loader_cfg = cfg.test_dataloader.copy()
    loader_cfg['batch_size'] = 250
    loader_cfg['num_workers'] = 0
    loader_cfg['persistent_workers'] = False
    loader = Runner.build_dataloader(loader_cfg)
    batches, seen = [], 0
    for data in loader:
        pixels = torch.stack(data['inputs']).float()
        labels = torch.cat([s.gt_label for s in data['data_samples']])
        batches.append((pixels, labels))
        seen += len(labels)
        if max_images is not None and seen >= max_images:
            break
    return batches


def _torch_predictions(model: torch.nn.Module,
                       batches: List[Any]) -> np.ndarray:
    preds = []
    with torch.no_grad():
        for pixels, _ in batches:
            data = model.data_preprocessor(
                dict(inputs=list(pixels), data_samples=None), False)
            preds.append(model(data['inputs'], None, 'tensor').argmax(1))
    return torch.cat(preds).numpy()


def _ort_predictions(sess: Any, batches: List[Any]) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([
        sess.run(None, {name: pixels.numpy()})[0].argmax(1)
        for pixels, _ in batches
    ])


def _top1(preds: np.ndarray, labels: np.ndarray) -> float:
    return round(100.0 * float((preds == labels).mean()), 2)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Export, time and evaluate; returns the results."""
    import mmquant
    from mmquant.apis.ptq import build_float_model
    from mmquant.deploy import export_onnx, ort_session
    from mmengine.registry import init_default_scope
    torch.set_num_threads(1)
    cfg = Config.fromfile(args.config)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    os.makedirs(args.work_dir, exist_ok=True)
    example = torch.rand(1, *args.shape) * 255
    batches = _test_batches(cfg, args.max_images)
    labels = torch.cat([lab for _, lab in batches]).numpy()
    rows = []
    variants = [('float', None)] + [
        tuple(item.split('=', 1)) for item in args.int
    ]
    sessions = []
    for label, int_path in variants:
        model = build_float_model(cfg, args.checkpoint)
        if int_path is not None:
            mmquant.load(model, int_path)
        model.eval()
        path = osp.join(args.work_dir, f'{label.lower()}.onnx')
        export_onnx(model, example, path, tensor_mode=True, normalize=True,
                    require_quantized=int_path is not None)
        ref = _torch_predictions(model, batches)
        modes = ('exact', 'ort-defaults', 'folded') if int_path else (
            'ort-defaults', )
        for mode in modes:
            sess = ort_session(path, mode=mode, num_threads=args.threads)
            preds = _ort_predictions(sess, batches)
            rows.append(
                dict(model=label, mode=mode, onnx=path,
                     onnx_bytes=osp.getsize(path),
                     top1_torch=_top1(ref, labels),
                     top1_onnx=_top1(preds, labels),
                     images=int(labels.size),
                     differing_predictions=int((ref != preds).sum())))
            sessions.append(sess)
            print(json.dumps(rows[-1]))
    for batch in args.batch:
        medians = _latencies(sessions, (batch, *args.shape), args.warmup,
                             args.repeats)
        for row, median in zip(rows, medians):
            row[f'latency_ms_b{batch}'] = round(1e3 * median, 3)
    import onnxruntime
    results = dict(
        config=args.config,
        command='python ' + ' '.join(sys.argv),
        machine=(f'{platform.machine()} CPU, {os.cpu_count()} cores, '
                 f'load average {os.getloadavg()[0]:.1f} at the end'),
        onnxruntime=onnxruntime.__version__,
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        rows=rows)
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)
    table = _markdown(results, args.batch)
    with open(osp.join(args.work_dir, 'results.md'), 'w') as f:
        f.write(table)
    print(table)
    return results


def _markdown(results: Dict[str, Any], batch_sizes: List[int]) -> str:
    head = ['model', 'onnxruntime mode', '.onnx size'] + [
        f'latency b{b} (ms)' for b in batch_sizes
    ] + ['top-1 PyTorch (%)', 'top-1 ONNX (%)', 'predictions differing']
    lines = ['| ' + ' | '.join(head) + ' |',
             '| ' + ' | '.join('---' for _ in head) + ' |']
    for r in results['rows']:
        cells = [r['model'], r['mode'], f"{r['onnx_bytes'] / 1024:.0f} KiB"
                 ] + [f"{r[f'latency_ms_b{b}']:.2f}" for b in batch_sizes] + [
                     f"{r['top1_torch']:.2f}", f"{r['top1_onnx']:.2f}",
                     f"{r['differing_predictions']} of {r['images']}"
                 ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the benchmark."""
    return run(parse_args(argv))


if __name__ == '__main__':
    main()
