"""Float vs quantized benchmark tables: run, record and render.

:func:`run_benchmark` quantizes each model of a benchmark list with each
method at each bit width, evaluates every result with the config's own
test loop, and records one row per run (metrics, INT file size, PTQ wall
time). :func:`render_markdown` turns the rows into OpenMMLab-style tables,
:func:`update_readme` replaces the Results section of an algorithm README
between two markers, and :func:`render_metafile` writes a ``metafile.yml``
in OpenMMLab's model-index format.

A benchmark list is an mmengine config with ``models`` (a list of dicts
with ``name``, ``config``, ``checkpoint``, optional ``dataset``) and
optionally ``methods``, ``bits``, ``calib_samples`` and ``eval_samples``.
"""
import json
import os
import os.path as osp
import platform
import re
import textwrap
import time
from dataclasses import asdict, dataclass, field
from typing import (Any, Callable, Dict, List, Optional, Sequence, Tuple,
                    Union)

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from torch import nn

from mmquant.checkpoint.float_loading import sha256_file
from mmquant.checkpoint.int_model import save_quantized
from mmquant.fileio import write_text_atomic
from ..evaluation import evaluate
from ..ptq import (build_float_model, build_quantizer, int_checkpoint_meta,
                  prepare_calibration)

#: Quantizer settings of every benchmark method (merged over the model
#: config's own ``quantizer`` dict).
METHODS: Dict[str, Dict[str, Any]] = {
    'rtn': dict(type='mmquant.RTNQuantizer'),
    'bitsplit-fast': dict(type='mmquant.BitSplitQuantizer',
                          error_compensation=False),
    'bitsplit': dict(type='mmquant.BitSplitQuantizer',
                     error_compensation=True),
    # the bits tag's weight part is the average-bits target (w3.5a8)
    'bitsplit-mixed': dict(type='mmquant.BitSplitQuantizer',
                           error_compensation=True),
}
#: The methods whose bits tag gives ``target_bits`` instead of ``w_bits``.
MIXED_METHODS = ('bitsplit-mixed', )
#: How each method is named in tables.
METHOD_TITLES = {
    'float': 'float',
    'rtn': 'RTN',
    'bitsplit-fast': 'BitSplit (fast)',
    'bitsplit': 'BitSplit (EC)',
    'bitsplit-mixed': 'BitSplit (EC, mixed)',
}
DEFAULT_BITS = ('w8a8', 'w4a8', 'w3a8', 'w2a8')
#: (metric key, column title, scale) per task; the first is the one the
#: delta vs float refers to.
TASK_METRICS = {
    'Image Classification': (('accuracy/top1', 'Top-1 (%)', 1.0),
                             ('accuracy/top5', 'Top-5 (%)', 1.0)),
    'Object Detection': (('coco/bbox_mAP', 'box AP', 100.0),
                         ('coco/bbox_mAP_50', 'AP50', 100.0)),
}
#: Title of the column with the first metric's change vs float.
DELTA_TITLES = {'Image Classification': 'Δ Top-1',
                'Object Detection': 'Δ box AP'}
README_START = '<!-- mmquant-benchmark:start -->'
README_END = '<!-- mmquant-benchmark:end -->'
_BITS_RE = re.compile(r'^w([2-8](?:\.[0-9]+)?)a([2-8]|f)$')


@dataclass
class BenchmarkModel:
    """One model of a benchmark list.

    Args:
        name (str): Name shown in the tables.
        config (str): The model config (mmpretrain or mmdet).
        checkpoint (str): Its float checkpoint.
        dataset (str): Dataset name for the tables and the metafile.
    """

    name: str
    config: str
    checkpoint: str
    dataset: str = ''


@dataclass
class BenchmarkRow:
    """The result of one (model, method, bits) run.

    Args:
        model (str): The model's name.
        config (str): Its config file.
        task (str): ``'Image Classification'`` or ``'Object Detection'``.
        dataset (str): The dataset name.
        method (str): ``'float'`` or a key of :data:`METHODS`.
        bits (str): ``'fp32'`` or ``'w{k}a{k}'``.
        metrics (dict): The evaluator's metrics.
        params (int): Parameters of the float model.
        flops (int): Multiply-accumulates of the Conv2d/Linear layers for
            one calibration image.
        file_bytes (int): Size of the float or INT checkpoint file.
        ptq_seconds (float, optional): Wall time of the quantization.
        file (str): The checkpoint written (or read, for float).
    """

    model: str
    config: str
    task: str
    dataset: str
    method: str
    bits: str
    metrics: Dict[str, Any]
    params: int
    flops: int
    file_bytes: int
    ptq_seconds: Optional[float] = None
    file: str = ''
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> Tuple[str, str, str]:
        """(model, method, bits): what identifies a run."""
        return (self.model, self.method, self.bits)


def parse_bits(bits: str) -> Tuple[Union[int, float], Optional[int]]:
    """Parse ``'w4a8'`` into ``(4, 8)`` (``'w4af'``: float activations).

    A fractional weight part (``'w3.5a8'``) is a mixed-precision target,
    returned as a float; only :data:`MIXED_METHODS` accept it.

    Args:
        bits (str): The bit-width tag.

    Returns:
        tuple: ``(w_bits, a_bits or None)``.

    Raises:
        ValueError: If the tag is not ``w<2..8>a<2..8|f>``.
    """
    match = _BITS_RE.match(str(bits).lower())
    if match is None or not 2 <= float(match.group(1)) <= 8:
        raise ValueError(f'bad bit-width tag {bits!r}: expected '
                         "'w<2..8>a<2..8>' (e.g. 'w4a8') or 'w<2..8>af' "
                         "for float activations ('w3.5a8': an average for "
                         'bitsplit-mixed)')
    a = match.group(2)
    w = match.group(1)
    return (float(w) if '.' in w else int(w)), None if a == 'f' else int(a)


def method_quantizer(method: str, bits: str) -> Dict[str, Any]:
    """The quantizer settings of one benchmark run.

    Args:
        method (str): A key of :data:`METHODS`.
        bits (str): A bit-width tag.

    Returns:
        dict: :data:`METHODS` ``[method]`` with ``w_bits`` (or, for
        :data:`MIXED_METHODS`, ``target_bits``) and ``a_bits``.

    Raises:
        ValueError: For a fractional tag of a uniform method.
    """
    check_methods([method])
    w_bits, a_bits = parse_bits(bits)
    if method in MIXED_METHODS:
        return dict(METHODS[method], target_bits=float(w_bits),
                    a_bits=a_bits)
    if isinstance(w_bits, float):
        raise ValueError(f'{bits!r}: fractional weight bits are an '
                         f'average-bits target; method {method!r} needs '
                         'integer bits (use one of '
                         f'{list(MIXED_METHODS)})')
    return dict(METHODS[method], w_bits=w_bits, a_bits=a_bits)


def check_methods(methods: Sequence[str]) -> List[str]:
    """Validate method names.

    Args:
        methods (Sequence[str]): Keys of :data:`METHODS`.

    Returns:
        list[str]: The methods.
    """
    for method in methods:
        if method not in METHODS:
            raise ValueError(f'unknown benchmark method {method!r}; choose '
                             f'from {sorted(METHODS)}')
    return list(methods)


def load_benchmark_list(path: str) -> Tuple[List[BenchmarkModel], Config]:
    """Read a benchmark list config.

    Args:
        path (str): The list config (``models = [dict(name, config,
            checkpoint, dataset), ...]``).

    Returns:
        tuple: The models and the whole config (for defaults).
    """
    cfg = Config.fromfile(path)
    entries = cfg.get('models')
    if not entries:
        raise ValueError(f'{path}: a benchmark list needs a non-empty '
                         '`models` list')
    models = []
    for i, entry in enumerate(entries):
        missing = [k for k in ('name', 'config', 'checkpoint')
                   if not entry.get(k)]
        if missing:
            raise ValueError(f'{path}: models[{i}] lacks {missing}')
        unknown = set(entry) - {'name', 'config', 'checkpoint', 'dataset'}
        if unknown:
            raise ValueError(f'{path}: models[{i}] has unknown keys '
                             f'{sorted(unknown)}')
        models.append(BenchmarkModel(**dict(entry)))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f'{path}: model names must be unique: {names}')
    return models, cfg


def select_models(models: Sequence[BenchmarkModel],
                  names: Optional[Sequence[str]]) -> List[BenchmarkModel]:
    """The models of a list with the given names (all for ``None``).

    Args:
        models (Sequence[BenchmarkModel]): The list's models.
        names (Sequence[str], optional): Names to keep (``--models``).

    Returns:
        list[BenchmarkModel]: The selected models, in the list's order.

    Raises:
        ValueError: Naming the unknown names and the list's names.
    """
    if not names:
        return list(models)
    known = {m.name for m in models}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f'unknown model name(s) {unknown}; the list has '
                         f'{sorted(known)}')
    return [m for m in models if m.name in names]


def replace_data_root(cfg: Config, data_root: str) -> Config:
    """Point every path under the config's ``data_root`` to another root.

    The config's top-level ``data_root`` variable names the old root; every
    string in the config that starts with it (dataset roots, COCO
    annotation files of the evaluators) is rewritten.

    Args:
        cfg (Config): The model config.
        data_root (str): The new root.

    Returns:
        Config: A new config.
    """
    old = cfg.get('data_root')
    if not old:
        raise ValueError(f'{cfg.filename}: --data-root needs the config to '
                         'define a top-level `data_root`')
    old_norm = old.rstrip('/')
    new_norm = data_root.rstrip('/')

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(v) for v in value)
        if isinstance(value, str) and (value == old or value.startswith(
                old_norm + '/') or value == old_norm):
            return new_norm + value[len(old_norm):]
        return value

    new = Config(walk(cfg.to_dict()), filename=cfg.filename)
    return new


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


def save_results(path: str, rows: Sequence[Any],
                 info: Dict[str, Any]) -> None:
    """Write result rows (dataclasses) and run information as JSON,
    atomically.

    Args:
        path (str): The JSON file.
        rows (Sequence): :class:`BenchmarkRow` (or other dataclass) rows.
        info (dict): Machine, command, settings.
    """
    data = dict(info=info, rows=[asdict(r) for r in rows])
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True)
                      + '\n')


def load_results(path: str, row_type: type = BenchmarkRow
                 ) -> Tuple[List[Any], Dict[str, Any]]:
    """Read a JSON file written by :func:`save_results`.

    Args:
        path (str): The JSON file.
        row_type (type): The rows' dataclass. Defaults to
            :class:`BenchmarkRow`.

    Returns:
        tuple: The rows and the run information.
    """
    with open(path) as f:
        data = json.load(f)
    return [row_type(**r) for r in data['rows']], data.get('info', {})


def merge_results(paths: Sequence[str], row_type: type = BenchmarkRow,
                  union: Sequence[str] = ('methods', 'bits')
                  ) -> Tuple[List[Any], Dict[str, Any]]:
    """The union of several results files of :func:`save_results`.

    Lets parts of one benchmark (or ablation) run in parallel processes
    with their own work dirs, then be rendered as one table. A run (same
    ``row.key``) present in several files is taken from the last.

    Args:
        paths (Sequence[str]): The JSON files.
        row_type (type): The rows' dataclass (with a ``key``). Defaults to
            :class:`BenchmarkRow`.
        union (Sequence[str]): ``info`` lists merged as unions. Defaults
            to ``('methods', 'bits')``.

    Returns:
        tuple: The rows (first occurrence order) and the merged info
        (all sessions, the unions of ``union``).

    Raises:
        ValueError: If the files were measured with other calibration or
            evaluation sample counts.
    """
    rows: Dict[Tuple[str, ...], Any] = {}
    info: Dict[str, Any] = {}
    for path in paths:
        part, part_info = load_results(path, row_type)
        for row in part:
            rows[row.key] = row
        if not info:
            info = dict(part_info)
            for key in ('sessions', *union):
                info[key] = list(info.get(key, []))
            continue
        for key in ('calib_samples', 'eval_samples'):
            if part_info.get(key) != info.get(key):
                raise ValueError(
                    f'cannot merge {path}: {key}={part_info.get(key)!r}, '
                    f'the others have {info.get(key)!r}')
        for key in ('sessions', *union):
            info[key] += [v for v in part_info.get(key, [])
                          if v not in info[key]]
    return list(rows.values()), info


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
        methods (Sequence[str]): Keys of :data:`METHODS`.
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
                method='float', bits='fp32', metrics=_plain(metrics),
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
                path = osp.join(work_dir, _slug(entry.name),
                                f'{method}_{tag}_int.pth')
                os.makedirs(osp.dirname(path), exist_ok=True)
                save_quantized(qmodel, path, int_checkpoint_meta(
                    quantizer, report, cfg, entry.checkpoint))
                t1 = time.perf_counter()
                metrics = evaluate(qmodel, cfg, eval_samples)
                timed += 1
                rows.append(BenchmarkRow(
                    method=method, bits=tag, metrics=_plain(metrics),
                    file_bytes=osp.getsize(path), file=path,
                    ptq_seconds=round(ptq_seconds, 2),
                    extra=dict(eval_seconds=round(
                        time.perf_counter() - t1, 2),
                        layers=len(report.quantized_layers),
                        timing=report.timing,
                        load_average=_load_average()),
                    **common))
                save_results(results_path, rows, info)
                del qmodel
        del model, batches
    save_results(results_path, rows, info)
    logger.info(f'mmquant.benchmark: {len(rows)} runs in {results_path}')
    return rows


def _load_average() -> Optional[float]:
    """The 1-minute load average (timings under load are slower)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _plain(metrics: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for key, value in metrics.items():
        if hasattr(value, 'item'):
            value = value.item()
        if isinstance(value, (int, float, str)) or value is None:
            out[str(key)] = value
    return out


def _slug(name: str) -> str:
    return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_') or 'model'


def _size(num: int) -> str:
    if num >= 1024 ** 2:
        return f'{num / 1024 ** 2:.2f} MiB'
    return f'{num / 1024:.0f} KiB'


def _metric(row: BenchmarkRow, key: str, scale: float) -> Optional[float]:
    value = row.metrics.get(key)
    if not isinstance(value, (int, float)) or value < 0:
        return None
    return float(value) * scale


def _fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return '-'
    return f'{value:+.2f}' if signed else f'{value:.2f}'


def _link(path: str, base: str) -> str:
    if not path:
        return '-'
    rel = osp.relpath(osp.abspath(path), osp.abspath(base)) if base \
        else path
    return f'[{osp.basename(path)}]({rel})'


def render_header(info: Dict[str, Any], command: str = '',
                  rows: Optional[Sequence[BenchmarkRow]] = None) -> str:
    """The line above the tables: machine, commands, samples, load.

    Args:
        info (dict): The ``info`` of :func:`load_results`.
        command (str): Used when ``info`` has no sessions.
        rows (Sequence[BenchmarkRow], optional): For the load averages.

    Returns:
        str: A paragraph ending with a blank line.
    """
    evals = info.get('eval_samples')
    evals = (f'the first {evals} test samples' if evals
             else 'the full test set')
    sessions = info.get('sessions') or [dict(command=command)]
    machines = sorted({str(s.get('machine', '?')) for s in sessions})
    commands = '; '.join(f'`{s.get("command", command)}`'
                         for s in sessions)
    label = 'Command' if len(sessions) == 1 else \
        'Commands (one benchmark, resumed)'
    text = (f'Measured on: {"; ".join(machines)}. {label}: {commands}. '
            f'{info.get("calib_samples")} calibration images, evaluated on '
            f'{evals}.')
    loads = [r.extra.get('load_average') for r in rows or []
             if r.extra.get('load_average') is not None]
    # rows rebuilt from generated files keep only the rendered range
    loads = loads or list(info.get('load_average_range') or [])
    if loads:
        text += (f' 1-minute load average during the quantized runs: '
                 f'{min(loads):.1f}-{max(loads):.1f} (PTQ times grow with '
                 'load).')
    return text + '\n\n'


def render_markdown(rows: Sequence[BenchmarkRow],
                    link_base: str = '',
                    entry_dir: Optional[str] = None) -> str:
    """OpenMMLab-style Markdown tables, one per model.

    Columns: Model, Params(M), Flops(G), Method, Bits, the task's two
    metrics, the delta of the first vs float, the INT (or float) file
    size, PTQ wall time, Config and Download (the float checkpoint).

    Args:
        rows (Sequence[BenchmarkRow]): Rows of :func:`run_benchmark`.
        link_base (str): Folder the links are relative to (the folder of
            the Markdown file); ``''`` keeps paths as recorded.
        entry_dir (str, optional): Folder of the entry configs
            (:func:`entry_config_path`); the Config column of a quantized
            row links its entry config. Default: the model config.

    Returns:
        str: The Markdown text.
    """
    order = {m: i for i, m in enumerate(['float', *METHODS])}
    by_model: Dict[str, List[BenchmarkRow]] = {}
    for row in rows:
        by_model.setdefault(row.model, []).append(row)
    parts = []
    for name, group in by_model.items():
        first = group[0]
        metrics = TASK_METRICS[first.task]
        floats = [r for r in group if r.method == 'float']
        base = _metric(floats[0], *metrics[0][::2]) if floats else None
        title = f'### {name}'
        if first.dataset:
            title += f' ({first.dataset})'
        header = (['Model', 'Params(M)', 'Flops(G)', 'Method', 'Bits']
                  + [m[1] for m in metrics]
                  + [DELTA_TITLES[first.task], 'File',
                     'PTQ time (s)', 'Config', 'Download'])
        lines = [title, '', '| ' + ' | '.join(header) + ' |',
                 '|' + ' --- |' * len(header)]

        def sort_key(r: BenchmarkRow) -> Tuple[int, int]:
            w = 32 if r.bits == 'fp32' else parse_bits(r.bits)[0]
            return (order.get(r.method, 99), -w)

        for row in sorted(group, key=sort_key):
            values = [_metric(row, key, scale) for key, _, scale in metrics]
            delta = None
            if row.method != 'float' and base is not None \
                    and values[0] is not None:
                delta = values[0] - base
            cells = [name, f'{row.params / 1e6:.2f}',
                     f'{row.flops / 1e9:.3f}',
                     METHOD_TITLES.get(row.method, row.method),
                     'FP32' if row.bits == 'fp32' else row.bits.upper(),
                     *[_fmt(v) for v in values], _fmt(delta, signed=True),
                     _size(row.file_bytes),
                     '-' if row.ptq_seconds is None
                     else f'{row.ptq_seconds:.1f}',
                     _link(row.config if entry_dir is None
                           else entry_config_path(row.config, row.method,
                                                  row.bits, entry_dir),
                           link_base),
                     _link(row.file, link_base)
                     if row.method == 'float' else '-']
            lines.append('| ' + ' | '.join(cells) + ' |')
        parts.append('\n'.join(lines))
    return '\n\n'.join(parts) + '\n'


def update_readme(path: str, section: str, start: str = README_START,
                  end: str = README_END) -> None:
    """Replace the text between two markers of a Markdown page.

    Args:
        path (str): The page (must contain ``start`` and ``end``, in this
            order, once each).
        section (str): The new text between them.
        start (str): The start marker. Defaults to :data:`README_START`.
        end (str): The end marker. Defaults to :data:`README_END`.
    """
    with open(path) as f:
        text = f.read()
    starts, ends = text.count(start), text.count(end)
    if starts != 1 or ends != 1 or text.index(start) > text.index(end):
        raise ValueError(
            f'{path}: needs exactly one {start!r} followed by one '
            f'{end!r} line to mark the generated results '
            f'(found {starts} and {ends})')
    head, rest = text.split(start)
    _, tail = rest.split(end)
    write_text_atomic(path, head + start + '\n' + section.strip()
                      + '\n' + end + tail)


#: Metadata of each method in a metafile entry (``Mode``: BitSplit only).
METHOD_METADATA: Dict[str, Dict[str, str]] = {
    'float': dict(Method='float'),
    'rtn': dict(Method='RTN'),
    'bitsplit-fast': dict(Method='BitSplit', Mode='fast'),
    'bitsplit': dict(Method='BitSplit', Mode='EC'),
    'bitsplit-mixed': dict(Method='BitSplit', Mode='EC, mixed precision'),
}
#: How each method is named in the file names of entry configs.
_FILE_TAGS = {'rtn': 'rtn', 'bitsplit-fast': 'bitsplit-fast',
              'bitsplit': 'bitsplit-ec',
              'bitsplit-mixed': 'bitsplit-ec-mixed'}
#: Metric names of the metafile (OpenMMLab's) per evaluator key.
_METAFILE_KEYS = {
    'accuracy/top1': 'Top 1 Accuracy',
    'accuracy/top5': 'Top 5 Accuracy',
    'coco/bbox_mAP': 'box AP',
    'coco/bbox_mAP_50': 'box AP@0.5',
}


def entry_name(model: str, method: str, bits: str) -> str:
    """The metafile ``Name`` of one run.

    Args:
        model (str): The model's name in the benchmark list.
        method (str): ``'float'`` or a key of :data:`METHODS`.
        bits (str): ``'fp32'`` or a bit-width tag.

    Returns:
        str: ``<model slug>_<method>_<bits>``, lower case.
    """
    return f'{_slug(model)}_{method}_{bits}'.lower()


def entry_config_path(config: str, method: str, bits: str,
                      folder: str) -> str:
    """The config that reproduces one run by itself.

    Args:
        config (str): The model config the benchmark ran.
        method (str): ``'float'`` or a key of :data:`METHODS`.
        bits (str): ``'fp32'`` or a bit-width tag.
        folder (str): Folder of the generated entry configs.

    Returns:
        str: ``config`` itself for float runs, else
        ``<folder>/<config stem>_<method>_<bits>.py`` (``bitsplit-ec``
        for error-compensated BitSplit).
    """
    if method == 'float':
        return config
    if method not in _FILE_TAGS:
        raise ValueError(f'unknown benchmark method {method!r}')
    stem = osp.splitext(osp.basename(config))[0]
    return osp.join(folder,
                    f'{stem}_{_FILE_TAGS[method]}_{bits.lower()}.py')


def render_entry_config(config: str, method: str, bits: str,
                        folder: str) -> str:
    """The text of the config :func:`entry_config_path` names.

    It inherits the model config and sets the quantizer the benchmark
    merged over the model config's own (:data:`METHODS` plus the bits), so
    ``Config.fromfile`` of it gives the quantizer of the measured run.

    Args:
        config (str): The model config the benchmark ran.
        method (str): A key of :data:`METHODS`.
        bits (str): A bit-width tag.
        folder (str): Folder the entry config is written to (``_base_`` is
            relative to it).

    Returns:
        str: Python config text.
    """
    quantizer = method_quantizer(method, bits)
    base = osp.relpath(config, folder).replace(osp.sep, '/')
    about = textwrap.wrap(
        f'{METHOD_TITLES[method]} {bits.upper()} of {config}: its model, '
        'data and evaluation, quantized by the `quantizer` below (the '
        "settings the benchmark merged over that config's own).", 77)
    lines = ['# Generated by tools/analysis_tools/benchmark.py',
             '# (mmquant.apis.benchmark.render_entry_config); do not edit.']
    lines += [f'# {line}' for line in about]
    lines += ['#', '#   python tools/ptq.py THIS_CONFIG FLOAT_CHECKPOINT',
              f"_base_ = ['{base}']", '', 'quantizer = dict(']
    items = [f'    {key}={value!r}' for key, value in quantizer.items()]
    lines.append(',\n'.join(items) + ')')
    return '\n'.join(lines) + '\n'


def write_entry_configs(rows: Sequence[BenchmarkRow],
                        folder: str) -> List[str]:
    """Write :func:`render_entry_config` of every quantized row.

    Args:
        rows (Sequence[BenchmarkRow]): The results.
        folder (str): Folder of the entry configs.

    Returns:
        list[str]: The paths written (or already up to date).
    """
    paths = []
    for row in rows:
        if row.method == 'float':
            continue
        path = entry_config_path(row.config, row.method, row.bits, folder)
        text = render_entry_config(row.config, row.method, row.bits,
                                   folder)
        if not osp.isfile(path) or _read(path) != text:
            write_text_atomic(path, text)
        paths.append(path)
    return paths


def quantizer_metadata(cfg: Config) -> Dict[str, Any]:
    """Method, mode and bits of a config's quantizer, as in a metafile.

    Args:
        cfg (Config): A config with a ``quantizer``.

    Returns:
        dict: ``Method`` (``'BitSplit'`` or ``'RTN'``), ``Mode``
        (``'EC'``/``'fast'``, BitSplit only), ``Weight bits`` and
        ``Activation bits`` (32 for float activations).
    """
    if not cfg.get('quantizer'):
        raise ValueError(f'{cfg.filename}: no `quantizer` in the config')
    quantizer = build_quantizer(cfg)
    qcfg = quantizer.config
    method = getattr(quantizer, 'method', type(quantizer).__name__)
    meta: Dict[str, Any] = dict(
        Method={'rtn': 'RTN', 'bitsplit': 'BitSplit'}.get(method, method))
    if method == 'bitsplit':
        meta['Mode'] = 'EC' if qcfg.error_compensation else 'fast'
        if qcfg.target_bits is not None:
            meta['Mode'] += ', mixed precision'
    meta['Weight bits'] = qcfg.w_bits if qcfg.target_bits is None \
        else qcfg.target_bits
    meta['Activation bits'] = 32 if qcfg.a_bits is None else qcfg.a_bits
    return meta


def _row_metadata(row: BenchmarkRow,
                  info: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if row.method not in METHOD_METADATA:
        raise ValueError(f'unknown benchmark method {row.method!r}')
    meta: Dict[str, Any] = dict(METHOD_METADATA[row.method])
    w_bits, a_bits = (32, 32) if row.bits == 'fp32' \
        else parse_bits(row.bits)
    meta['Weight bits'] = w_bits
    meta['Activation bits'] = a_bits or 32
    if info is not None:
        if row.method != 'float' and info.get('calib_samples'):
            meta['Calibration images'] = info['calib_samples']
        meta['Test samples'] = info.get('eval_samples') or 'all'
    meta.update({'Parameters': row.params, 'FLOPs': row.flops,
                 'File size': row.file_bytes})
    return meta


def quantized_configs(folder: str) -> List[str]:
    """The configs directly in a folder that have a ``quantizer``.

    Args:
        folder (str): e.g. ``configs/bitsplit``.

    Returns:
        list[str]: Sorted paths (joined to ``folder``; none if it does
        not exist).
    """
    paths = []
    if not osp.isdir(folder):
        return paths
    for name in sorted(os.listdir(folder)):
        path = osp.join(folder, name)
        if name.endswith('.py') and osp.isfile(path) and \
                Config.fromfile(path).get('quantizer'):
            paths.append(path)
    return paths


def unmeasured_configs(rows: Sequence[BenchmarkRow],
                       folder: str) -> List[str]:
    """The quantized configs of a folder that no row was measured with.

    Args:
        rows (Sequence[BenchmarkRow]): The results.
        folder (str): The metafile's folder, e.g. ``configs/bitsplit``.

    Returns:
        list[str]: Sorted paths of :func:`quantized_configs`.
    """
    used = {osp.normpath(r.config) for r in rows}
    return [p for p in quantized_configs(folder or '.')
            if osp.normpath(p) not in used]


def render_metafile(rows: Sequence[BenchmarkRow],
                    readme: str = 'configs/bitsplit/README.md',
                    info: Optional[Dict[str, Any]] = None,
                    entry_dir: Optional[str] = None,
                    unmeasured: Sequence[str] = ()) -> str:
    """A ``metafile.yml`` in OpenMMLab's model-index format.

    One entry per row, whose ``Config`` reproduces it by itself: the model
    config for float rows, the entry config of
    :func:`entry_config_path` for quantized ones. ``Metadata`` names the
    method, BitSplit's mode, the bits and, with ``info``, the calibration
    images and test samples the values were measured with. Every config
    of ``unmeasured`` gets an entry with no ``Results`` and
    ``Measured: false`` in its ``Metadata``.

    Args:
        rows (Sequence[BenchmarkRow]): Rows of :func:`run_benchmark`.
        readme (str): The README the collection points to.
        info (dict, optional): The ``info`` of :func:`load_results`.
        entry_dir (str, optional): Folder of the entry configs (default:
            the README's).
        unmeasured (Sequence[str]): Quantized configs with no results.

    Returns:
        str: The YAML text.
    """
    import yaml
    folder = osp.dirname(readme) if entry_dir is None else entry_dir
    collection = dict(
        Name='BitSplit',
        Metadata=dict(Training_Data='calibration images only',
                      Architecture=['Post-Training Quantization']),
        Paper=dict(
            Title='Towards Accurate Post-Training Network Quantization '
            'via Bit-Split and Stitching',
            URL='http://proceedings.mlr.press/v119/wang20c.html'),
        README=readme)
    models = []
    for row in rows:
        metrics = TASK_METRICS[row.task]
        results = {}
        for key, title, scale in metrics:
            value = _metric(row, key, scale)
            if value is not None:
                results[_METAFILE_KEYS.get(key, title)] = round(value, 2)
        entry = {
            'Name': entry_name(row.model, row.method, row.bits),
            'In Collection': 'BitSplit',
            'Config': entry_config_path(row.config, row.method, row.bits,
                                        folder),
            'Metadata': _row_metadata(row, info),
            'Results': [dict(Task=row.task, Dataset=row.dataset or '-',
                             Metrics=results)],
        }
        if row.method == 'float' and row.file:
            entry['Weights'] = row.file
        models.append(entry)
    for path in unmeasured:
        models.append({
            'Name': _slug(osp.splitext(osp.basename(path))[0]).lower(),
            'In Collection': 'BitSplit',
            'Config': path,
            'Metadata': dict(quantizer_metadata(Config.fromfile(path)),
                             Measured=False),
        })
    names = [m['Name'] for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f'metafile entry names are not unique: {names}')
    return yaml.safe_dump(dict(Collections=[collection], Models=models),
                          sort_keys=False, allow_unicode=True, width=79)


def write_metafile(path: str, rows: Sequence[BenchmarkRow],
                   readme: str, info: Optional[Dict[str, Any]] = None,
                   entry_dir: Optional[str] = None,
                   unmeasured: Optional[Sequence[str]] = None
                   ) -> List[str]:
    """Write the entry configs and :func:`render_metafile`, atomically.

    Args:
        path (str): The ``metafile.yml``.
        rows (Sequence[BenchmarkRow]): The results.
        readme (str): The README the collection points to.
        info (dict, optional): The ``info`` of :func:`load_results`.
        entry_dir (str, optional): Folder of the entry configs (default:
            the README's).
        unmeasured (Sequence[str], optional): Quantized configs with no
            results; default: every config with a ``quantizer`` directly
            in the metafile's folder that no row uses.

    Returns:
        list[str]: The entry configs of the quantized rows.
    """
    folder = osp.dirname(readme) if entry_dir is None else entry_dir
    if unmeasured is None:
        unmeasured = unmeasured_configs(rows, osp.dirname(path))
    written = write_entry_configs(rows, folder)
    write_text_atomic(path, render_metafile(rows, readme, info, folder,
                                            unmeasured))
    return written


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


__all__ = [
    'BenchmarkModel', 'BenchmarkRow', 'METHODS', 'DEFAULT_BITS',
    'parse_bits', 'method_quantizer', 'MIXED_METHODS',
    'load_benchmark_list', 'select_models', 'replace_data_root',
    'count_macs', 'run_benchmark', 'render_header', 'render_markdown',
    'update_readme',
    'render_metafile', 'write_metafile', 'save_results', 'load_results',
    'merge_results', 'METHOD_METADATA', 'entry_name', 'entry_config_path',
    'render_entry_config', 'write_entry_configs', 'quantizer_metadata',
    'quantized_configs', 'unmeasured_configs'
]

