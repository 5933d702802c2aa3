"""Benchmark results: one row per run, kept as JSON.

A :class:`BenchmarkRow` records one (model, method, bits) run of the
benchmark, an :class:`AblationRow` one (model, variant, mode, bits) run of
an ablation. :func:`save_results` writes rows and the run information
(machine, commands, sample counts) atomically; :func:`load_results` reads
them back and :func:`merge_results` joins the files of parts run in
parallel. :data:`TASK_METRICS` names the metrics each task records.
"""
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from mmquant.fileio import write_text_atomic
from ..evaluation import to_jsonable


#: (metric key, column title, scale) per task; the first is the one the
#: delta vs float refers to.
TASK_METRICS = {
    'Image Classification': (('accuracy/top1', 'Top-1 (%)', 1.0),
                             ('accuracy/top5', 'Top-5 (%)', 1.0)),
    'Object Detection': (('coco/bbox_mAP', 'box AP', 100.0),
                         ('coco/bbox_mAP_50', 'AP50', 100.0)),
}


@dataclass
class BenchmarkRow:
    """The result of one (model, method, bits) run.

    Args:
        model (str): The model's name.
        config (str): Its config file.
        task (str): ``'Image Classification'`` or ``'Object Detection'``.
        dataset (str): The dataset name.
        method (str): ``'float'`` or a key of :data:`~.methods.METHODS`.
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


def row_metric(row: Union[BenchmarkRow, AblationRow], key: str,
               scale: float) -> Optional[float]:
    """One metric of a row, scaled as the tables show it.

    Args:
        row (BenchmarkRow | AblationRow): The row.
        key (str): The evaluator's metric key, e.g. ``'accuracy/top1'``.
        scale (float): Factor of :data:`TASK_METRICS` (100 for COCO AP).

    Returns:
        float or None: None when the row has no such number (or the
        evaluator's ``-1`` for "not computed").
    """
    value = row.metrics.get(key)
    if not isinstance(value, (int, float)) or value < 0:
        return None
    return float(value) * scale


def primary_metric(row: Union[BenchmarkRow, AblationRow]) -> float:
    """The row's first task metric (top-1 %, box AP x 100), or NaN.

    Args:
        row (BenchmarkRow | AblationRow): The row.

    Returns:
        float: The value of :func:`row_metric` for the task's first
        metric of :data:`TASK_METRICS`; NaN when the row has none.
    """
    key, _, scale = TASK_METRICS[row.task][0]
    value = row_metric(row, key, scale)
    return float('nan') if value is None else value


def scalar_metrics(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """The evaluator's metrics that are one number or string, as JSON.

    Args:
        metrics (dict): The metrics of
            :func:`~mmquant.apis.evaluation.evaluate`.

    Returns:
        dict: The metrics whose value is a number, a string or None
        (one-element tensors as Python numbers); lists, dicts and other
        objects are left out.
    """
    values = {str(key): to_jsonable(value) for key, value in metrics.items()
              if not isinstance(value, (dict, list, tuple))}
    return {key: value for key, value in values.items()
            if value is None or isinstance(value, (int, float, str))}


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


def save_ablation(path: str, rows: Sequence[AblationRow],
                  info: Dict[str, Any]) -> None:
    """Write ablation rows and run information (:func:`save_results`).

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
