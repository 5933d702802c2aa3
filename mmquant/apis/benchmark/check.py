"""Benchmark regression check: re-run committed metafile entries.

``tools/analysis_tools/benchmark.py LIST --check METAFILE`` re-measures
every entry of a metafile (or of a ``model-index.yml`` and its imports)
that is a run of the benchmark list and has committed ``Results``, with
the calibration images and test samples the entry records, and compares
each metric with its committed value (docs/benchmarks.md, "Regression
check").
"""
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmengine.config import Config

from ..calibration import calib_dataloader_cfg
from .lists import BenchmarkModel, replace_data_root, slug
from .metafile import METAFILE_METRICS, entry_name, load_model_index
from .methods import DEFAULT_BITS, METHODS, check_methods, parse_bits
from .render import format_value
from .results import TASK_METRICS, BenchmarkRow, row_metric
from .run import run_benchmark


#: Exit status of a check with a metric below tolerance.
CHECK_REGRESSION = 1
#: Exit status of a check that compared too little (``min_checked``,
#: ``strict``).
CHECK_NOT_ENOUGH = 3
_NOT_MEASURED = 'not measured (no committed Results)'


@dataclass
class CheckReport:
    """What :func:`check_benchmark` compared and skipped.

    Args:
        index (str): The metafile checked against.
        tolerance (float): Largest allowed drop, in the metric's units.
        compared (list[dict]): One dict per metric: ``entry``, ``metric``,
            ``committed``, ``measured`` (None: not measured), ``delta``,
            ``failed``.
        skipped (list[tuple]): ``(entry, reason, selected)``; selected
            entries were wanted but could not be checked.
    """

    index: str
    tolerance: float
    compared: List[Dict[str, Any]] = field(default_factory=list)
    skipped: List[Tuple[str, str, bool]] = field(default_factory=list)

    @property
    def checked(self) -> List[str]:
        """Names of the entries compared, in order."""
        return list(dict.fromkeys(c['entry'] for c in self.compared))

    @property
    def failed(self) -> List[Dict[str, Any]]:
        """The metrics below tolerance."""
        return [c for c in self.compared if c['failed']]

    def exit_code(self, min_checked: int = 1, strict: bool = False) -> int:
        """0, :data:`CHECK_REGRESSION` or :data:`CHECK_NOT_ENOUGH`.

        Args:
            min_checked (int): Fewer checked entries fail the check.
            strict (bool): Any wanted entry skipped fails the check.

        Returns:
            int: The exit status.
        """
        if self.failed:
            return CHECK_REGRESSION
        if len(self.checked) < min_checked or (
                strict and any(s[2] for s in self.skipped)):
            return CHECK_NOT_ENOUGH
        return 0


def _data_paths(cfg: Config) -> List[str]:
    """Dataset roots and annotation files the test and calibration
    loaders and the test evaluators read."""
    paths = []
    loaders = [cfg.get('test_dataloader')]
    try:
        loaders.append(calib_dataloader_cfg(cfg))
    except Exception:  # no loader to calibrate from: the run says so
        pass
    for loader in loaders:
        dataset = (loader or {}).get('dataset') or {}
        while isinstance(dataset.get('dataset'), dict):  # wrappers
            dataset = dataset['dataset']
        root = dataset.get('data_root') or ''
        if root:
            paths.append(root)
        ann = dataset.get('ann_file')
        if isinstance(ann, str) and ann:
            paths.append(ann if osp.isabs(ann) or not root
                         else osp.join(root, ann))
    evaluators = cfg.get('test_evaluator') or []
    for evaluator in (evaluators if isinstance(evaluators, (list, tuple))
                      else [evaluators]):
        ann = evaluator.get('ann_file')
        if isinstance(ann, str) and ann:
            paths.append(ann)
    return list(dict.fromkeys(paths))


def missing_inputs(model: BenchmarkModel,
                   data_root: Optional[str] = None) -> Optional[str]:
    """Why a model of a benchmark list cannot run here, if it cannot.

    Args:
        model (BenchmarkModel): The model.
        data_root (str, optional): Replaces the config's ``data_root``.

    Returns:
        str or None: e.g. ``'checkpoint checkpoints/x.pth not found'``.
    """
    if not osp.isfile(model.config):
        return f'config {model.config} not found'
    if not osp.isfile(model.checkpoint):
        return f'checkpoint {model.checkpoint} not found'
    cfg = Config.fromfile(model.config)
    if data_root:
        cfg = replace_data_root(cfg, data_root)
    for path in _data_paths(cfg):
        if not osp.exists(path):
            return f'data {path} not found'
    return None


def _committed_samples(wanted: Sequence[Dict[str, Any]], key: str,
                       given: Optional[int], what: str,
                       default: Optional[int]) -> Optional[int]:
    """The sample count the committed values of one model used."""
    values = {e['Metadata'][key] for e in wanted
              if key in (e.get('Metadata') or {})}
    if len(values) > 1:
        names = [e['Name'] for e in wanted]
        raise ValueError(f'the committed entries {names} were measured '
                         f'with different {key}: {sorted(map(str, values))}')
    if not values:
        return default if given is None else given
    value = values.pop()
    value = None if value == 'all' else int(value)
    if given is not None and given != value:
        raise ValueError(
            f'the committed values were measured with {what} '
            f'{"all" if value is None else value}; a check with {given} '
            'would compare other measurements')
    return value


def check_benchmark(models: Sequence[BenchmarkModel],
                    methods: Sequence[str],
                    bits: Sequence[str],
                    index: str,
                    work_dir: str,
                    tolerance: float = 0.3,
                    calib_samples: Optional[int] = None,
                    eval_samples: Optional[int] = None,
                    default_calib_samples: int = 256,
                    default_eval_samples: Optional[int] = None,
                    device: str = 'cpu',
                    data_root: Optional[str] = None,
                    resume: bool = False,
                    info: Optional[Dict[str, Any]] = None) -> CheckReport:
    """Re-run the committed entries of a metafile and compare.

    Every entry of ``index`` (a metafile or a ``model-index.yml``) that is
    a run of ``models`` x ({float} + ``methods``) x ``bits`` and has
    committed ``Results`` is measured again with :func:`~.run.run_benchmark`,
    with the calibration images and test samples its ``Metadata`` records
    (so a value committed from a subset is checked on the same subset),
    and each committed metric is compared with the new value rounded as
    the metafile rounds it. A metric *fails* when it is more than
    ``tolerance`` below its committed value, in the metric's own units
    (points of top-1 %, of box AP x 100); rising values never fail. Every
    other entry is reported as skipped with the reason.

    Args:
        models (Sequence[BenchmarkModel]): The benchmark list's models.
        methods (Sequence[str]): Keys of :data:`~.methods.METHODS` to check.
        bits (Sequence[str]): Bit-width tags to check.
        index (str): The committed metafile or model index.
        work_dir (str): Output folder (one sub-folder per model).
        tolerance (float): Largest allowed drop (>= 0).
        calib_samples (int, optional): Asked for on the command line:
            must equal the count the entries record, if they record one.
        eval_samples (int, optional): As ``calib_samples``, for the test
            samples.
        default_calib_samples (int): Used when neither the entries nor
            ``calib_samples`` give the count (the list's).
        default_eval_samples (int, optional): As
            ``default_calib_samples`` (None: the full test set).
        device (str): ``'cpu'`` or ``'cuda'``.
        data_root (str, optional): Replaces every config's ``data_root``.
        resume (bool): Keep the runs of an earlier check in ``work_dir``.
        info (dict, optional): Extra run information for the JSON.

    Returns:
        CheckReport: The comparison.
    """
    if not tolerance >= 0:
        raise ValueError(f'tolerance must be >= 0, got {tolerance}')
    methods = check_methods(methods)
    tags = [b.lower() for b in bits]
    for tag in tags:
        parse_bits(tag)
    entries = load_model_index(index)
    report = CheckReport(index=index, tolerance=tolerance)
    runs = {}
    all_tags = list(dict.fromkeys([*DEFAULT_BITS, *tags]))
    for model in models:
        runs[entry_name(model.name, 'float', 'fp32')] = (
            model, 'float', 'fp32')
        for method in METHODS:
            for tag in all_tags:
                runs[entry_name(model.name, method, tag)] = (model, method,
                                                             tag)
    wanted: Dict[str, List[Dict[str, Any]]] = {}
    for name, entry in entries.items():
        model, method, tag = runs.get(name, (None, None, None))
        selected = model is not None and (method == 'float' or (
            method in methods and tag in tags))
        results = entry.get('Results') or []
        if not results or not results[0].get('Metrics'):
            report.skipped.append((name, _NOT_MEASURED, selected))
        elif model is None:
            report.skipped.append(
                (name, 'not a run of the selected benchmark models', False))
        elif not selected:
            report.skipped.append(
                (name, 'method or bits not selected', False))
        else:
            wanted.setdefault(model.name, []).append(entry)
    for model in models:
        group = wanted.get(model.name)
        if not group:
            continue
        reason = missing_inputs(model, data_root)
        if reason:
            report.skipped += [(e['Name'], reason, True) for e in group]
            continue
        calib = _committed_samples(
            group, 'Calibration images', calib_samples,
            'calibration images', default_calib_samples)
        evals = _committed_samples(group, 'Test samples', eval_samples,
                                   'test samples', default_eval_samples)
        keys = [runs[e['Name']] for e in group]
        need_methods = [m for m in methods
                        if any(k[1] == m for k in keys)]
        need_bits = [t for t in tags if any(k[2] == t for k in keys)]
        rows = run_benchmark(
            [model], need_methods, need_bits if need_methods else [],
            osp.join(work_dir, slug(model.name)),
            calib_samples=calib, eval_samples=evals, device=device,
            data_root=data_root, resume=resume, info=info)
        by_name = {entry_name(r.model, r.method, r.bits): r for r in rows}
        for entry in group:
            report.compared += _compare(entry, by_name[entry['Name']],
                                        tolerance)
    return report


def _compare(entry: Dict[str, Any], row: BenchmarkRow,
             tolerance: float) -> List[Dict[str, Any]]:
    """One comparison per committed metric of an entry."""
    titles = {METAFILE_METRICS.get(key, title): (key, scale)
              for key, title, scale in TASK_METRICS[row.task]}
    out = []
    for title, committed in entry['Results'][0]['Metrics'].items():
        measured = None
        if title in titles:
            measured = row_metric(row, *titles[title])
        if measured is not None:
            measured = round(measured, 2)
        delta = None if measured is None else round(measured - committed,
                                                    2)
        out.append(dict(entry=entry['Name'], metric=title,
                        committed=committed, measured=measured, delta=delta,
                        failed=delta is None or delta < -tolerance - 1e-9))
    return out


def render_check(report: CheckReport, min_checked: int = 1,
                 strict: bool = False) -> str:
    """The check's result as Markdown: what moved, what was skipped.

    Args:
        report (CheckReport): The report.
        min_checked (int): As :meth:`CheckReport.exit_code`.
        strict (bool): As :meth:`CheckReport.exit_code`.

    Returns:
        str: The text.
    """
    lines = [f'Benchmark check against {report.index}: a metric fails '
             f'when it is more than {report.tolerance:g} below its '
             'committed value (points of the metric as the metafile '
             'writes it).', '']
    moved = [c for c in report.compared
             if c['failed'] or c['delta'] != 0]
    if moved:
        lines += ['| Entry | Metric | Committed | Measured | Δ | Status |',
                  '| --- | --- | --- | --- | --- | --- |']
        for c in moved:
            lines.append(
                f'| {c["entry"]} | {c["metric"]} | {c["committed"]:.2f} | '
                f'{format_value(c["measured"])} | '
                f'{format_value(c["delta"], signed=True)} '
                f'| {"FAIL" if c["failed"] else "ok"} |')
    else:
        lines.append('No metric moved.')
    lines += ['', f'{len(report.compared)} metrics of '
              f'{len(report.checked)} entries compared, {len(moved)} '
              f'moved, {len(report.failed)} below tolerance.']
    # entries of the list's runs, and entries with no value, by name; the
    # runs of other models, methods or bits only as a count
    listed = [s for s in report.skipped if s[2] or s[1] == _NOT_MEASURED]
    if listed:
        lines += ['', f'Skipped {len(listed)} entries:', '',
                  '| Entry | Reason |', '| --- | --- |']
        lines += [f'| {name} | {reason} |' for name, reason, _ in listed]
    others = len(report.skipped) - len(listed)
    if others:
        lines += ['', f'Not selected: {others} entries (runs of other '
                  'models, methods or bits than the list and --models, '
                  '--methods, --bits select).']
    code = report.exit_code(min_checked, strict)
    if code == CHECK_REGRESSION:
        verdict = f'FAIL: {len(report.failed)} metrics below tolerance'
    elif code == CHECK_NOT_ENOUGH:
        verdict = (f'FAIL: {len(report.checked)} entries checked (at '
                   f'least {min_checked} required'
                   + (', and --strict allows no skipped wanted entry'
                      if strict else '') + ')')
    else:
        verdict = 'PASS'
    lines += ['', f'Result: {verdict} (exit status {code}).']
    return '\n'.join(lines) + '\n'
