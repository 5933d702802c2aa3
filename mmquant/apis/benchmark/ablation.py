"""Ablation runs: every (model, variant, mode, bits) of an ablation list.

:func:`run_ablation` quantizes every model with every variant
(:class:`~.lists.Variant`) in every mode (:data:`~.methods.ABLATION_MODES`)
at every bit width, evaluates each result with the config's own test loop
and records one :class:`~.results.AblationRow` per run in
``ablation.json``; :func:`baseline_rows` takes the runs a benchmark
already made instead. :func:`~.render.render_ablation` writes the tables.
"""
import os.path as osp
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmengine.config import Config
from mmengine.logging import MMLogger

from ..evaluation import evaluate
from ..ptq import build_float_model, build_quantizer, prepare_calibration
from .lists import BenchmarkModel, Variant
from .methods import (ABLATION_MODES, METHOD_TITLES, method_quantizer,
                      parse_bits)
from .results import (AblationRow, load_ablation, load_results,
                      primary_metric, save_ablation, scalar_metrics)
from .run import load_average, machine_description, model_task


def baseline_rows(path: str, variant: str, modes: Sequence[str],
                  bits: Sequence[str], calib_samples: int,
                  eval_samples: Optional[int]) -> List[AblationRow]:
    """Take the float and default-setting rows of a benchmark's results.

    The benchmark (:func:`~.run.run_benchmark`) runs each model's quantizer
    settings unchanged, so its BitSplit rows are the ablation's variant
    with no settings, measured on the same calibration and test sets.

    Args:
        path (str): A benchmark ``results.json``.
        variant (str): The name of the variant they stand for.
        modes (Sequence[str]): The ablation's modes.
        bits (Sequence[str]): The ablation's bit widths.
        calib_samples (int): Must equal the benchmark's.
        eval_samples (int, optional): Must equal the benchmark's.

    Returns:
        list[AblationRow]: The rows, each recording its source.

    Raises:
        ValueError: If the benchmark used other sample counts.
    """
    rows, info = load_results(path)
    for key, value in (('calib_samples', calib_samples),
                       ('eval_samples', eval_samples)):
        if info.get(key) != value:
            raise ValueError(f'{path} was measured with {key}='
                             f'{info.get(key)!r}, the ablation uses '
                             f'{value!r}')
    out = []
    for row in rows:
        if row.method == 'float' or (row.method in modes
                                     and row.bits in bits):
            name = 'float' if row.method == 'float' else variant
            extra = dict(source=path)
            if row.method != 'float':
                extra['load_average'] = row.extra.get('load_average')
            out.append(AblationRow(
                model=row.model, task=row.task, variant=name,
                mode=row.method, bits=row.bits, metrics=row.metrics,
                ptq_seconds=row.ptq_seconds, extra=extra))
    return out


def run_ablation(models: Sequence[BenchmarkModel],
                 variants: Sequence[Variant],
                 modes: Sequence[str],
                 bits: Sequence[str],
                 work_dir: str,
                 calib_samples: int = 256,
                 eval_samples: Optional[int] = None,
                 device: str = 'cpu',
                 resume: bool = False,
                 baseline: Optional[Tuple[str, str]] = None,
                 info: Optional[Dict[str, Any]] = None
                 ) -> List[AblationRow]:
    """Quantize and evaluate every (model, variant, mode, bits).

    Each model's calibration batches are built once and shared by all its
    runs; ``<work_dir>/ablation.json`` is rewritten after every run, so an
    interrupted ablation keeps what it measured (``resume=True`` skips the
    runs already there). Variants run in the list's order, each over all
    modes and bit widths, so the first variants finish first.

    Args:
        models (Sequence[BenchmarkModel]): The models.
        variants (Sequence[Variant]): The settings to compare.
        modes (Sequence[str]): Items of :data:`~.methods.ABLATION_MODES`.
        bits (Sequence[str]): Bit-width tags, e.g. ``'w4a8'``.
        work_dir (str): Output folder.
        calib_samples (int): Calibration images per model.
        eval_samples (int, optional): Evaluate on the first samples only.
        device (str): ``'cpu'`` or ``'cuda'``.
        resume (bool): Keep and skip the runs of an earlier JSON.
        baseline (tuple, optional): ``(results.json, variant)``: take the
            float rows and that variant's rows from a benchmark run with
            the same sample counts instead of running them.
        info (dict, optional): Extra run information for the JSON.

    Returns:
        list[AblationRow]: All rows.
    """
    bad = sorted(set(modes) - set(ABLATION_MODES))
    if bad:
        raise ValueError(f'unknown mode(s) {bad}; choose from '
                         f'{list(ABLATION_MODES)}')
    tags = [b.lower() for b in bits]
    for tag in tags:
        parse_bits(tag)
    logger = MMLogger.get_current_instance()
    path = osp.join(work_dir, 'ablation.json')
    rows: List[AblationRow] = []
    sessions: List[Dict[str, Any]] = []
    all_modes, all_tags = list(modes), list(tags)
    if resume and osp.exists(path):
        rows, old = load_ablation(path)
        sessions = list(old.get('sessions', []))
        # the modes and widths of earlier sessions stay in the tables
        all_modes = list(dict.fromkeys([*old.get('modes', []), *modes]))
        all_tags = list(dict.fromkeys([*old.get('bits', []), *tags]))
        for key, value in (('calib_samples', calib_samples),
                           ('eval_samples', eval_samples)):
            if rows and old.get(key) != value:
                raise ValueError(f'cannot resume {path}: its runs have '
                                 f'{key}={old.get(key)!r}, this run '
                                 f'{value!r}')
    if baseline is not None:
        have = {r.key for r in rows}
        names = {m.name for m in models}
        rows += [r for r in baseline_rows(baseline[0], baseline[1], modes,
                                          tags, calib_samples, eval_samples)
                 if r.model in names and r.key not in have]
    sessions.append(dict(info or {}, machine=machine_description(device)))
    info = dict(sessions=sessions, calib_samples=calib_samples,
                eval_samples=eval_samples, modes=all_modes, bits=all_tags,
                variants=[asdict(v) for v in variants])
    done = {r.key for r in rows}
    todo = [(m, v, mode, t) for m in models for v in variants
            for mode in modes for t in tags
            if (m.name, v.name, mode, t) not in done]
    t_start = time.perf_counter()
    for model_entry in models:
        mine = [x for x in todo if x[0] is model_entry]
        if not mine and (model_entry.name, 'float', 'float',
                         'fp32') in done:
            continue
        cfg = Config.fromfile(model_entry.config)
        model = build_float_model(cfg, model_entry.checkpoint).to(device)
        task = model_task(model)
        batches, forward_fn = prepare_calibration(
            model, cfg, calib_samples, build_quantizer(cfg).config.seed)
        if (model_entry.name, 'float', 'float', 'fp32') not in done:
            t0 = time.perf_counter()
            metrics = evaluate(model, cfg, eval_samples)
            rows.append(AblationRow(
                model=model_entry.name, task=task, variant='float',
                mode='float', bits='fp32', metrics=scalar_metrics(metrics),
                extra=dict(eval_seconds=round(time.perf_counter() - t0,
                                              2))))
            save_ablation(path, rows, info)
        for _, variant, mode, tag in mine:
            overrides = dict(method_quantizer(mode, tag),
                             **variant.quantizer)
            quantizer = build_quantizer(cfg, overrides)
            t0 = time.perf_counter()
            qmodel, _ = quantizer.quantize(model, batches, forward_fn)
            ptq = time.perf_counter() - t0
            metrics = evaluate(qmodel, cfg, eval_samples)
            rows.append(AblationRow(
                model=model_entry.name, task=task, variant=variant.name,
                mode=mode, bits=tag, metrics=scalar_metrics(metrics),
                ptq_seconds=round(ptq, 2),
                extra=dict(eval_seconds=round(
                    time.perf_counter() - t0 - ptq, 2),
                    load_average=load_average())))
            save_ablation(path, rows, info)
            n = todo.index((model_entry, variant, mode, tag)) + 1
            elapsed = time.perf_counter() - t_start
            logger.info(
                f'mmquant.ablation [{n}/{len(todo)}] {model_entry.name} '
                f'{variant.name} {METHOD_TITLES[mode]} {tag}: '
                f'{primary_metric(rows[-1]):.2f} (elapsed {elapsed / 60:.1f} '
                f'min, ETA {elapsed / n * (len(todo) - n) / 60:.1f} min)')
            del qmodel
        del model, batches
    save_ablation(path, rows, info)
    return rows
