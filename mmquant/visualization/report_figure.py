"""The figure of a quantization report: where the output error comes from.

:func:`plot_report` draws, per layer in forward order, the relative output
error of round-to-nearest and of BitSplit (log scale, BitSplit coloured by
the layer's weight bits, layers left float marked); for error-compensated
runs the running sum of the squared errors through the network; and, when
the run recorded sensitivities, each layer's error at every candidate
width as a heat map. It uses matplotlib's object API with the Agg canvas
(no pyplot state, no display, no global backend change).
"""
import io
import math
from typing import Any, Dict, List, Mapping, Tuple

#: Colour of each weight width (BitSplit markers, heat map labels).
BITS_COLOURS = {2: '#d62728', 3: '#ff7f0e', 4: '#1f77b4', 5: '#9467bd',
                6: '#8c564b', 7: '#e377c2', 8: '#2ca02c'}
DPI = 100


def check_report(report: Any, name: str = 'report') -> None:
    """Refuse what is not a :class:`~mmquant.QuantReport` dict.

    Args:
        report: The parsed JSON.
        name (str): How to name it in the error.

    Raises:
        ValueError: Naming what is missing.
    """
    if not isinstance(report, Mapping) or not isinstance(
            report.get('layers'), list) or 'mode' not in report:
        raise ValueError(f'{name} is not an mmquant report: it needs '
                         '"mode" and a "layers" list (the report.json '
                         'tools/ptq.py writes)')
    for i, layer in enumerate(report['layers']):
        if not isinstance(layer, Mapping) or not isinstance(
                layer.get('name'), str):
            raise ValueError(f'{name}: layers[{i}] is not a layer record '
                             '(no "name")')


def figure_size(report: Mapping[str, Any]) -> Tuple[int, int]:
    """Width and height in pixels of :func:`plot_report`'s figure.

    Args:
        report (Mapping): A report dict.

    Returns:
        tuple[int, int]: ``(width, height)``.
    """
    n = len(report['layers'])
    width = min(40.0, max(8.0, 2.0 + 0.14 * n))
    height = 4.5 * len(_panels(report)) + 1.5
    return round(width * DPI), round(height * DPI)


def _panels(report: Mapping[str, Any]) -> List[str]:
    panels = ['errors']
    if report.get('mode') == 'error_compensated':
        panels.append('cumulative')
    if any(layer.get('sensitivity') for layer in report['layers']):
        panels.append('sensitivity')
    return panels


def plot_report(report: Mapping[str, Any], out: str) -> str:
    """Draw a report's figure into a PNG file.

    Args:
        report (Mapping): A :class:`~mmquant.QuantReport` as a dict (e.g.
            the parsed ``report.json``).
        out (str): The PNG to write (atomically).

    Returns:
        str: ``out``.

    Raises:
        ValueError: If ``report`` is not a report.
    """
    check_report(report)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mmquant.fileio import atomic_write

    layers = report['layers']
    panels = _panels(report)
    width, height = figure_size(report)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    x = list(range(len(layers)))
    names = [layer['name'] for layer in layers]
    for ax, panel in zip(axes, panels):
        if panel == 'errors':
            _errors(ax, layers, report)
        elif panel == 'cumulative':
            _cumulative(ax, layers)
        else:
            _sensitivity(ax, layers, 'mixed_precision' in report.get(
                'extra', {}))
        if panel != 'sensitivity':
            _layer_ticks(ax, x, names)
    fig.tight_layout()
    buf = io.BytesIO()
    canvas.print_png(buf)
    atomic_write(out, lambda f: f.write(buf.getvalue()))
    return out


def _layer_ticks(ax: Any, x: List[int], names: List[str]) -> None:
    """Layer names as x labels; every k-th one beyond 60 layers."""
    step = max(1, math.ceil(len(names) / 60))
    ax.set_xticks(x[::step])
    ax.set_xticklabels(names[::step], rotation=90,
                       fontsize=7 if len(names) <= 30 else 6)
    ax.set_xlim(-0.5, len(names) - 0.5)


def _errors(ax: Any, layers: List[Dict[str, Any]],
            report: Mapping[str, Any]) -> None:
    """Panel 1: RTN vs BitSplit relative output error per layer."""
    mode = report.get('mode', '?')
    rtn = [(i, la['rel_error_rtn']) for i, la in enumerate(layers)
           if la.get('rel_error_rtn')]
    if rtn:
        ax.scatter(*zip(*rtn), marker='o', facecolors='none',
                   edgecolors='grey', label='round-to-nearest', zorder=2)
    seen = set()
    for i, la in enumerate(layers):
        err, bits = la.get('rel_error'), la.get('w_bits')
        if bits is None:
            ax.axvspan(i - 0.5, i + 0.5, color='0.9', zorder=0)
            seen.add('float')
            continue
        if not err:
            continue
        label = None if bits in seen else f'BitSplit W{bits}'
        seen.add(bits)
        ax.scatter([i], [err], color=BITS_COLOURS.get(bits, 'k'),
                   label=label, zorder=3)
    if 'float' in seen:
        ax.axvspan(0, 0, color='0.9', label='left float')
    if rtn or len(seen - {'float'}):
        ax.set_yscale('log')
    ax.set_ylabel('relative output error')
    title = 'Per-layer output error'
    if mode == 'error_compensated':
        title += (' (EC: against the float network, inputs from the '
                  'quantized one)')
    ax.set_title(title, fontsize=10)
    ax.grid(True, which='both', axis='y', alpha=0.3)
    ax.legend(fontsize=8, loc='best')


def _cumulative(ax: Any, layers: List[Dict[str, Any]]) -> None:
    """Panel 2: running sum of squared relative errors through depth."""
    for key, label, style in (('rel_error_rtn', 'round-to-nearest', '--'),
                              ('rel_error', 'BitSplit', '-')):
        total, xs, ys = 0.0, [], []
        for i, la in enumerate(layers):
            if la.get(key) is not None and la.get('w_bits') is not None:
                total += la[key] ** 2
                xs.append(i)
                ys.append(total)
        if xs:
            ax.plot(xs, ys, style, label=label)
    ax.set_ylabel('sum of squared rel. errors')
    ax.set_title('Error growth through the network', fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc='upper left')


def sensitivity_grid(layers: List[Dict[str, Any]]
                     ) -> Tuple[str, List[Dict[str, Any]], List[int],
                                List[List[float]]]:
    """What the sensitivity panel shows.

    Args:
        layers (list[dict]): The report's layers.

    Returns:
        tuple: The report key shown (``'network_sensitivity'`` when any
        layer has it, else ``'sensitivity'``), the layers shown (those
        with a sensitivity), the widths, and ``log10`` of the values as
        ``grid[width][layer]`` (NaN where a layer has no value).
    """
    rows = [la for la in layers if la.get('sensitivity')]
    widths = sorted({int(b) for la in rows for b in la['sensitivity']})
    network = any(la.get('network_sensitivity') for la in rows)
    key = 'network_sensitivity' if network else 'sensitivity'
    grid = [[math.log10(max((la.get(key) or {}).get(str(b), math.nan),
                            1e-12)) for la in rows] for b in widths]
    return key, rows, widths, grid


def _sensitivity(ax: Any, layers: List[Dict[str, Any]],
                 probe: bool) -> None:
    """Panel 3: log10 relative error at each candidate width (of the
    fast-mode sensitivity pass when ``probe``: a mixed-precision run), or,
    when the run allocated by the network probe, the relative change of
    the network's outputs with each layer alone at each width (the
    measure the allocation minimised; blank for the fixed layers)."""
    key, rows, widths, grid = sensitivity_grid(layers)
    network = key == 'network_sensitivity'
    image = ax.imshow(grid, aspect='auto', cmap='viridis',
                      interpolation='nearest')
    ax.set_yticks(range(len(widths)))
    ax.set_yticklabels([f'W{b}' for b in widths])
    for i, la in enumerate(rows):
        if la.get('w_bits') in widths:
            ax.scatter([i], [widths.index(la['w_bits'])], marker='s',
                       facecolors='none', edgecolors='white', s=30)
    _layer_ticks(ax, list(range(len(rows))), [la['name'] for la in rows])
    if network:
        title = ('Network sensitivity: log10 relative change of the '
                 'outputs, one layer at a time\n(the allocation\'s '
                 'measure; white squares: the width used; blank: fixed)')
    else:
        title = ('Sensitivity: log10 relative output error per width'
                 + (' in the fast-mode sensitivity pass' if probe else '')
                 + ' (white squares: the width used)')
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(image, ax=ax, pad=0.01)
