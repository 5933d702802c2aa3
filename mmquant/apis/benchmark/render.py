"""Markdown of benchmark and ablation results.

:func:`render_header` and :func:`render_markdown` write the Results
section of an algorithm README (OpenMMLab-style tables, one per model),
:func:`render_ablation` the tables of an ablation, and
:func:`update_readme` replaces the section between two markers of a
page with either.
"""
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmquant.fileio import write_text_atomic
from .lists import Variant
from .metafile import entry_config_path
from .methods import ABLATION_MODES, METHOD_TITLES, METHODS, parse_bits
from .results import (TASK_METRICS, AblationRow, BenchmarkRow,
                      primary_metric, row_metric)


#: The markers of the generated Results section of an algorithm README.
README_START = '<!-- mmquant-benchmark:start -->'
README_END = '<!-- mmquant-benchmark:end -->'
#: The markers of the generated ablation section of a page.
ABLATION_START = '<!-- mmquant-ablation:start -->'
ABLATION_END = '<!-- mmquant-ablation:end -->'
#: Title of the column with the first metric's change vs float.
DELTA_TITLES = {'Image Classification': 'Δ Top-1',
                'Object Detection': 'Δ box AP'}


def format_value(value: Optional[float], signed: bool = False) -> str:
    """A table cell: two decimals (with the sign), ``'-'`` for None.

    Args:
        value (float, optional): The value.
        signed (bool): Write ``+`` for positive values.

    Returns:
        str: e.g. ``'90.41'``, ``'+0.12'`` or ``'-'``.
    """
    if value is None:
        return '-'
    return f'{value:+.2f}' if signed else f'{value:.2f}'


def _size(num: int) -> str:
    """A file size as the tables write it (KiB or MiB)."""
    if num >= 1024 ** 2:
        return f'{num / 1024 ** 2:.2f} MiB'
    return f'{num / 1024:.0f} KiB'


def _link(path: str, base: str) -> str:
    """A Markdown link to ``path``, relative to ``base``."""
    if not path:
        return '-'
    rel = osp.relpath(osp.abspath(path), osp.abspath(base)) if base \
        else path
    return f'[{osp.basename(path)}]({rel})'


def render_header(info: Dict[str, Any], command: str = '',
                  rows: Optional[Sequence[BenchmarkRow]] = None) -> str:
    """The line above the tables: machine, commands, samples, load.

    Args:
        info (dict): The ``info`` of :func:`~.results.load_results`.
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
        rows (Sequence[BenchmarkRow]): Rows of :func:`~.run.run_benchmark`.
        link_base (str): Folder the links are relative to (the folder of
            the Markdown file); ``''`` keeps paths as recorded.
        entry_dir (str, optional): Folder of the entry configs
            (:func:`~.metafile.entry_config_path`); the Config column of a
            quantized row links its entry config. Default: the model config.

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
        base = row_metric(floats[0], *metrics[0][::2]) if floats else None
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
            values = [row_metric(row, key, scale) for key, _, scale in metrics]
            delta = None
            if row.method != 'float' and base is not None \
                    and values[0] is not None:
                delta = values[0] - base
            cells = [name, f'{row.params / 1e6:.2f}',
                     f'{row.flops / 1e9:.3f}',
                     METHOD_TITLES.get(row.method, row.method),
                     'FP32' if row.bits == 'fp32' else row.bits.upper(),
                     *[format_value(v) for v in values],
                     format_value(delta, signed=True),
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
            title += f' (float: {primary_metric(flt):.2f})'
        lines += ['', title, '',
                  '| mode | bits | ' + ' | '.join(
                      f'`{v.name}`' for v in variants) + ' |',
                  '| --- | --- |' + ' ---: |' * len(variants)]
        for mode in modes:
            for tag in tags:
                values = []
                for v in variants:
                    row = by_key.get((model, v.name, mode, tag))
                    values.append(None if row is None else primary_metric(row))
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
