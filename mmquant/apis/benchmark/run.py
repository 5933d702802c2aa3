"""Benchmark runs: quantize and evaluate every (model, method, bits).

:func:`run_benchmark` quantizes each model of a benchmark list with each
method at each bit width, evaluates every result with the config's own
test loop, and records one :class:`~.results.BenchmarkRow` per run
(metrics, INT file size, PTQ wall time) in ``results.json``.
"""
import os
import os.path as osp
import platform
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from torch import nn

from mmquant.checkpoint.float_loading import sha256_file
from mmquant.checkpoint.int_model import save_quantized
from ..evaluation import evaluate
from ..ptq import (build_float_model, build_quantizer, int_checkpoint_meta,
                   prepare_calibration)
from .lists import BenchmarkModel, replace_data_root, slug
from .methods import (METHOD_TITLES, check_methods, method_quantizer,
                      parse_bits)
from .results import BenchmarkRow, load_results, save_results, scalar_metrics


def model_task(model: nn.Module) -> str:
    """``'Object Detection'`` for mmdet detectors, else classification.

    Args:
        model (nn.Module): The float model.

    Returns:
        str: The task name used in tables and metafiles.
    """
    if hasattr(model, 'bbox_head') or hasattr(model, 'roi_head'):
        return 'Object Detection'
    return 'Image Classification'


def count_macs(model: nn.Module, batch: Dict[str, Any],
               forward_fn: Callable[[nn.Module, Any], Any]) -> int:
    """Multiply-accumulates of the Conv2d/Linear layers per image.

    Counted with forward hooks on one calibration batch (works on every
    model; no tracing) and divided by the batch size.

    Args:
        model (nn.Module): The model.
        batch (dict): A preprocessed batch.
        forward_fn (callable): ``forward_fn(model, batch)``.

    Returns:
        int: MACs per image (rounded down).
    """
    total = [0]

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_out = (module.in_channels // module.groups
                       * module.kernel_size[0] * module.kernel_size[1])
        else:
            per_out = module.in_features
        total[0] += output.numel() * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            forward_fn(model, batch)
    finally:
        for h in handles:
            h.remove()
    return total[0] // max(1, len(batch['inputs']))


def machine_description(device: str) -> str:
    """One line naming the machine the benchmark ran on.

    Args:
        device (str): The torch device used.

    Returns:
        str: e.g. ``'x86_64 CPU, 2 cores, torch 2.9.1+cu128, device cpu'``.
    """
    text = (f'{platform.machine()} CPU, {os.cpu_count()} cores, '
            f'{torch.get_num_threads()} torch threads, torch '
            f'{torch.__version__}, device {device}')
    if device.startswith('cuda') and torch.cuda.is_available():
        text += f' ({torch.cuda.get_device_name(device)})'
    return text


def load_average() -> Optional[float]:
    """The 1-minute load average (timings under load are slower).

    Returns:
        float or None: Rounded to 0.01; None where the platform has none.
    """
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run_benchmark(models: Sequence[BenchmarkModel],
                  methods: Sequence[str],
                  bits: Sequence[str],
                  work_dir: str,
                  calib_samples: int = 256,
                  eval_samples: Optional[int] = None,
                  device: str = 'cpu',
                  data_root: Optional[str] = None,
                  resume: bool = False,
                  info: Optional[Dict[str, Any]] = None
                  ) -> List[BenchmarkRow]:
    """Quantize and evaluate every (model, method, bits) combination.

    Each model is evaluated in float once; its calibration batches are
    built once and shared by all runs. Every run writes its INT checkpoint
    to ``<work_dir>/<model>/<method>_<bits>_int.pth``, and
    ``<work_dir>/results.json`` is rewritten after every run, so an
    interrupted benchmark keeps what it measured (``resume=True`` skips the
    runs already there).

    Args:
        models (Sequence[BenchmarkModel]): The models.
        methods (Sequence[str]): Keys of :data:`~.methods.METHODS`.
        bits (Sequence[str]): Bit-width tags, e.g. ``'w4a8'``.
        work_dir (str): Output folder.
        calib_samples (int): Calibration images per model.
        eval_samples (int, optional): Evaluate on the first samples only.
        device (str): ``'cpu'`` or ``'cuda'``.
        data_root (str, optional): Replaces every config's ``data_root``.
        resume (bool): Keep and skip the runs of an earlier results.json.
        info (dict, optional): Extra run information for the JSON.

    Returns:
        list[BenchmarkRow]: All rows (float first for each model).
    """
    methods = check_methods(methods)
    parsed = [(b.lower(), parse_bits(b)) for b in bits]
    for method in methods:  # refuse a bad pair before anything runs
        for tag, _ in parsed:
            method_quantizer(method, tag)
    if calib_samples < 1:
        raise ValueError(f'calib_samples must be >= 1, got {calib_samples}')
    logger = MMLogger.get_current_instance()
    results_path = osp.join(work_dir, 'results.json')
    rows: List[BenchmarkRow] = []
    sessions: List[Dict[str, Any]] = []
    if resume and osp.exists(results_path):
        rows, old = load_results(results_path)
        for key, value in (('calib_samples', calib_samples),
                           ('eval_samples', eval_samples)):
            if rows and old.get(key) != value:
                raise ValueError(
                    f'cannot resume {results_path}: its runs have '
                    f'{key}={old.get(key)!r}, this run {value!r}')
        sessions = list(old.get('sessions', []))
        logger.info(f'mmquant.benchmark: resuming, {len(rows)} runs kept '
                    f'from {results_path}')
    done = {r.key for r in rows}
    # one entry per invocation (a resumed benchmark lists all of them)
    sessions.append(dict(info or {}, machine=machine_description(device)))
    info = dict(sessions=sessions, calib_samples=calib_samples,
                eval_samples=eval_samples, methods=list(methods),
                bits=[b for b, _ in parsed])
    total = len(models) * (1 + len(methods) * len(parsed))
    count = 0
    t_start = time.perf_counter()
    timed = 0

    def progress(what: str) -> None:
        nonlocal count
        count += 1
        elapsed = time.perf_counter() - t_start
        eta = ''
        if timed:
            left = total - count + 1
            eta = f', ETA {elapsed / timed * left / 60:.1f} min'
        logger.info(f'mmquant.benchmark [{count}/{total}] {what}'
                    f' (elapsed {elapsed / 60:.1f} min{eta})')

    for entry in models:
        cfg = Config.fromfile(entry.config)
        if data_root:
            cfg = replace_data_root(cfg, data_root)
        wanted = [(entry.name, 'float', 'fp32')] + [
            (entry.name, m, b) for m in methods for b, _ in parsed]
        if all(k in done for k in wanted):
            count += len(wanted)
            continue
        model = build_float_model(cfg, entry.checkpoint).to(device)
        task = model_task(model)
        params = sum(p.numel() for p in model.parameters())
        batches, forward_fn = prepare_calibration(
            model, cfg, calib_samples, build_quantizer(cfg).config.seed)
        flops = count_macs(model, batches[0], forward_fn)
        common = dict(model=entry.name, config=entry.config, task=task,
                      dataset=entry.dataset, params=params, flops=flops)
        if (entry.name, 'float', 'fp32') not in done:
            progress(f'{entry.name}: float')
            t0 = time.perf_counter()
            metrics = evaluate(model, cfg, eval_samples)
            timed += 1
            rows.append(BenchmarkRow(
                method='float', bits='fp32', metrics=scalar_metrics(metrics),
                file_bytes=osp.getsize(entry.checkpoint),
                file=entry.checkpoint,
                extra=dict(eval_seconds=round(time.perf_counter() - t0, 2),
                           sha256=sha256_file(entry.checkpoint)),
                **common))
            save_results(results_path, rows, info)
        else:
            count += 1
        for method in methods:
            for tag, _ in parsed:
                if (entry.name, method, tag) in done:
                    count += 1
                    continue
                progress(f'{entry.name}: {METHOD_TITLES[method]} {tag}')
                overrides = method_quantizer(method, tag)
                quantizer = build_quantizer(cfg, overrides)
                t0 = time.perf_counter()
                qmodel, report = quantizer.quantize(model, batches,
                                                    forward_fn)
                ptq_seconds = time.perf_counter() - t0
                path = osp.join(work_dir, slug(entry.name),
                                f'{method}_{tag}_int.pth')
                os.makedirs(osp.dirname(path), exist_ok=True)
                save_quantized(qmodel, path, int_checkpoint_meta(
                    quantizer, report, cfg, entry.checkpoint))
                t1 = time.perf_counter()
                metrics = evaluate(qmodel, cfg, eval_samples)
                timed += 1
                rows.append(BenchmarkRow(
                    method=method, bits=tag, metrics=scalar_metrics(metrics),
                    file_bytes=osp.getsize(path), file=path,
                    ptq_seconds=round(ptq_seconds, 2),
                    extra=dict(eval_seconds=round(
                        time.perf_counter() - t1, 2),
                        layers=len(report.quantized_layers),
                        timing=report.timing,
                        load_average=load_average()),
                    **common))
                save_results(results_path, rows, info)
                del qmodel
        del model, batches
    save_results(results_path, rows, info)
    logger.info(f'mmquant.benchmark: {len(rows)} runs in {results_path}')
    return rows
