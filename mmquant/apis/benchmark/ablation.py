"""Ablations of BitSplit's settings on a benchmark list: run and render.

An ablation list is a benchmark list (:mod:`mmquant.apis.benchmark`) with
``variants``: named sets of quantizer settings merged over each model
config's ``quantizer`` (and over the mode's and the bits' settings).
:func:`run_ablation` quantizes every model with every variant in every
mode (``'bitsplit-fast'``, ``'bitsplit'``) at every bit width, evaluates
each result with the config's own test loop and records one
:class:`AblationRow` per run; :func:`render_ablation` writes one table
per model (rows: mode and bits, columns: variants).
"""
import os.path as osp
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmengine.config import Config
from mmengine.logging import MMLogger

from mmquant.quantization.config import QuantConfig
from ..evaluation import evaluate
from ..ptq import build_float_model, build_quantizer, prepare_calibration
from . import (METHOD_TITLES, TASK_METRICS, BenchmarkModel, _load_average,
               _metric, _plain, load_results, machine_description,
               merge_results, method_quantizer, model_task, parse_bits,
               save_results)

#: The modes an ablation compares (keys of the benchmark's METHODS).
ABLATION_MODES = ('bitsplit-fast', 'bitsplit')
ABLATION_START = '<!-- mmquant-ablation:start -->'
ABLATION_END = '<!-- mmquant-ablation:end -->'


@dataclass
class Variant:
    """One set of settings of an ablation.

    Args:
        name (str): Short name (a column of the tables).
        quantizer (dict): Quantizer settings merged over the model's.
        title (str): Longer description for the legend.
    """

    name: str
    quantizer: Dict[str, Any] = field(default_factory=dict)
    title: str = ''


@dataclass
class AblationRow:
    """The result of one (model, variant, mode, bits) run.

    Args:
        model (str): The model's name.
        task (str): ``'Image Classification'`` or ``'Object Detection'``.
        variant (str): The variant's name (``'float'`` for the float
            model).
        mode (str): ``'bitsplit-fast'``, ``'bitsplit'`` or ``'float'``.
        bits (str): ``'w{k}a{k}'`` or ``'fp32'``.
        metrics (dict): The evaluator's metrics.
        ptq_seconds (float, optional): Wall time of the quantization.
        extra (dict): Evaluation time, load average, where a row was
            taken from.
    """

    model: str
    task: str
    variant: str
    mode: str
    bits: str
    metrics: Dict[str, Any]
    ptq_seconds: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> Tuple[str, str, str, str]:
        """(model, variant, mode, bits): what identifies a run."""
        return (self.model, self.variant, self.mode, self.bits)


def load_variants(cfg: Config) -> List[Variant]:
    """Read and validate the ``variants`` of an ablation list.

    Args:
        cfg (Config): The ablation list.

    Returns:
        list[Variant]: The variants, in the list's order.

    Raises:
        ValueError: If there are none, a name repeats or is reserved, or
            a variant's settings are not valid :class:`QuantConfig` keys.
    """
    entries = cfg.get('variants')
    if not entries:
        raise ValueError(f'{cfg.filename}: an ablation list needs a '
                         'non-empty `variants` list')
    variants = []
    for i, entry in enumerate(entries):
        unknown = set(entry) - {'name', 'quantizer', 'title'}
        if unknown or not entry.get('name'):
            raise ValueError(f'{cfg.filename}: variants[{i}] needs a name '
                             'and only name/quantizer/title, got '
                             f'{sorted(entry)}')
        settings = dict(entry.get('quantizer') or {})
        QuantConfig.from_dict(settings)  # names a bad key or value
        variants.append(Variant(str(entry['name']), settings,
                                str(entry.get('title', ''))))
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or 'float' in names:
        raise ValueError(f'{cfg.filename}: variant names must be unique '
                         f'and not "float": {names}')
    return variants


def save_ablation(path: str, rows: Sequence[AblationRow],
                  info: Dict[str, Any]) -> None:
    """Write rows and run information as JSON, atomically
    (:func:`~mmquant.apis.benchmark.save_results`).

    Args:
        path (str): The JSON file.
        rows (Sequence[AblationRow]): The results.
        info (dict): Machine, commands, settings.
    """
    save_results(path, rows, info)


def load_ablation(path: str) -> Tuple[List[AblationRow], Dict[str, Any]]:
    """Read a JSON file written by :func:`save_ablation`.

    Args:
        path (str): The JSON file.

    Returns:
        tuple: The rows and the run information.
    """
    return load_results(path, AblationRow)


def merge_ablations(paths: Sequence[str]
                    ) -> Tuple[List[AblationRow], Dict[str, Any]]:
    """The union of several ablation JSON files (parallel parts).

    Args:
        paths (Sequence[str]): JSON files of :func:`save_ablation`.

    Returns:
        tuple: The rows (a run present twice is taken from the last file)
        and the merged info (all sessions, modes and bit widths).

    Raises:
        ValueError: If the parts used other calibration or evaluation
            sample counts.
    """
    return merge_results(paths, AblationRow, union=('modes', 'bits'))


def baseline_rows(path: str, variant: str, modes: Sequence[str],
                  bits: Sequence[str], calib_samples: int,
                  eval_samples: Optional[int]) -> List[AblationRow]:
    """Take the float and default-setting rows of a benchmark's results.

    The benchmark (``tools/analysis_tools/benchmark.py``) runs each model's quantizer
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
        modes (Sequence[str]): Items of :data:`ABLATION_MODES`.
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
                mode='float', bits='fp32', metrics=_plain(metrics),
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
                mode=mode, bits=tag, metrics=_plain(metrics),
                ptq_seconds=round(ptq, 2),
                extra=dict(eval_seconds=round(
                    time.perf_counter() - t0 - ptq, 2),
                    load_average=_load_average())))
            save_ablation(path, rows, info)
            n = todo.index((model_entry, variant, mode, tag)) + 1
            elapsed = time.perf_counter() - t_start
            logger.info(
                f'mmquant.ablation [{n}/{len(todo)}] {model_entry.name} '
                f'{variant.name} {METHOD_TITLES[mode]} {tag}: '
                f'{_primary(rows[-1]):.2f} (elapsed {elapsed / 60:.1f} '
                f'min, ETA {elapsed / n * (len(todo) - n) / 60:.1f} min)')
            del qmodel
        del model, batches
    save_ablation(path, rows, info)
    return rows


def _primary(row: AblationRow) -> float:
    """The row's first task metric (top-1 %, box AP x 100), or NaN."""
    key, _, scale = TASK_METRICS[row.task][0]
    value = _metric(row, key, scale)  # type: ignore[arg-type]
    return float('nan') if value is None else value


def render_ablation(rows: Sequence[AblationRow],
                    variants: Sequence[Variant],
                    info: Dict[str, Any]) -> str:
    """Markdown: a legend, one table per model, the mean changes.

    Each cell is the first task metric (top-1 %, box AP x 100) of one run;
    the best value of each row is bold. A missing run is ``-``.

    Args:
        rows (Sequence[AblationRow]): The results.
        variants (Sequence[Variant]): The columns, in order.
        info (dict): Run information (machine, commands, sample counts).

    Returns:
        str: The Markdown text.
    """
    by_key = {r.key: r for r in rows}
    models = list(dict.fromkeys(r.model for r in rows))
    modes = [m for m in ABLATION_MODES if m in info.get('modes', [])]
    tags = sorted(info.get('bits', []), key=lambda t: -parse_bits(t)[0])
    sessions = info.get('sessions') or []
    machines = sorted({str(s.get('machine', '?')) for s in sessions})
    commands = '; '.join(f'`{s.get("command", "")}`' for s in sessions)
    evals = info.get('eval_samples')
    evals = f'the first {evals} test samples' if evals else \
        'the full test set'
    sources = sorted({r.extra['source'] for r in rows
                      if r.extra.get('source')})
    lines = [f'Measured on: {"; ".join(machines)}. Commands: {commands}. '
             f'{info.get("calib_samples")} calibration images, evaluated '
             f'on {evals}.']
    if sources:
        lines[0] += (' The float rows and the '
                     f'`{variants[0].name}` rows are those of the '
                     f'benchmark, {", ".join(sources)} (same settings, '
                     'same calibration and test sets).')
    lines += ['', '| variant | settings (merged over the model config\'s '
              '`quantizer`) |', '| --- | --- |']
    for v in variants:
        settings = ', '.join(f'`{k}={val!r}`'
                             for k, val in v.quantizer.items()) or '-'
        lines.append(f'| `{v.name}` | {settings}'
                     f'{"; " + v.title if v.title else ""} |')
    deltas: Dict[Tuple[str, str], List[float]] = {
        (mode, v.name): [] for mode in modes for v in variants}
    for model in models:
        group = [r for r in rows if r.model == model]
        metric = TASK_METRICS[group[0].task][0][1]
        flt = by_key.get((model, 'float', 'float', 'fp32'))
        title = f'**{model}**, {metric}'
        if flt is not None:
            title += f' (float: {_primary(flt):.2f})'
        lines += ['', title, '',
                  '| mode | bits | ' + ' | '.join(
                      f'`{v.name}`' for v in variants) + ' |',
                  '| --- | --- |' + ' ---: |' * len(variants)]
        for mode in modes:
            for tag in tags:
                values = []
                for v in variants:
                    row = by_key.get((model, v.name, mode, tag))
                    values.append(None if row is None else _primary(row))
                known = [x for x in values if x is not None]
                best = max(known) if known else None
                ref = values[0]
                cells = []
                for v, x in zip(variants, values):
                    if x is None:
                        cells.append('-')
                        continue
                    text = f'{x:.2f}'
                    cells.append(f'**{text}**' if x == best else text)
                    if ref is not None:
                        deltas[(mode, v.name)].append(x - ref)
                lines.append(f'| {METHOD_TITLES[mode]} | {tag.upper()} | '
                             + ' | '.join(cells) + ' |')
    lines += ['', f'Mean change vs `{variants[0].name}` over the cells '
              'measured for both, per mode (points; number of cells):', '',
              '| mode | ' + ' | '.join(f'`{v.name}`' for v in variants)
              + ' |', '| --- |' + ' ---: |' * len(variants)]
    for mode in modes:
        cells = []
        for v in variants:
            d = deltas[(mode, v.name)]
            cells.append(f'{sum(d) / len(d):+.2f} ({len(d)})' if d else '-')
        lines.append(f'| {METHOD_TITLES[mode]} | ' + ' | '.join(cells)
                     + ' |')
    return '\n'.join(lines) + '\n'
