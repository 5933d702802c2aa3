"""Print the layers, bit widths and sizes of an mmquant INT checkpoint.

Example::

    python tools/inspect_checkpoint.py work_dirs/resnet18_w4.pth
    python tools/inspect_checkpoint.py work_dirs/resnet18_w4.pth --json
"""
import argparse
import json
import sys
from typing import Any, Dict, List, Optional

from mmquant.checkpoint import CheckpointError, inspect_quantized

_HEADER = ('layer', 'type', 'bits W/A', 'shape', 'packed bytes',
           'float bytes', 'ratio')
_RIGHT = (False, False, False, False, True, True, True)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description='Inspect an mmquant INT checkpoint: per-layer bits, '
        'shapes and sizes, and totals against float32')
    parser.add_argument('checkpoint', help='INT checkpoint file')
    parser.add_argument(
        '--json',
        action='store_true',
        help='print the full summary as JSON instead of a table')
    return parser.parse_args(argv)


def _ratio(value: Optional[float]) -> str:
    """Format a compression ratio.

    Args:
        value: The ratio, or None.

    Returns:
        E.g. ``'8.00x'`` or ``'-'``.
    """
    return '-' if value is None else f'{value:.2f}x'


def _mib(nbytes: int) -> str:
    """Format a byte count with its MiB value.

    Args:
        nbytes: Bytes.

    Returns:
        E.g. ``'1048576 (1.00 MiB)'``.
    """
    return f'{nbytes} ({nbytes / 2**20:.2f} MiB)'


def format_table(info: Dict[str, Any]) -> str:
    """Render the summary of :func:`inspect_quantized` as text.

    Args:
        info: The summary.

    Returns:
        The table of layers followed by the totals.
    """
    rows = [_HEADER]
    for layer in info['layers']:
        acts = '-' if layer['a_bits'] is None else str(layer['a_bits'])
        rows.append((layer['name'], layer['layer_type'],
                     f'{layer["w_bits"]}/{acts}',
                     'x'.join(str(s) for s in layer['shape']),
                     str(layer['packed_bytes']), str(layer['float_bytes']),
                     _ratio(layer['ratio'])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]

    def line(row: tuple) -> str:
        cells = [
            cell.rjust(w) if right else cell.ljust(w)
            for cell, w, right in zip(row, widths, _RIGHT)
        ]
        return ' | '.join(cells).rstrip()

    rule = '-+-'.join('-' * w for w in widths)
    out = [line(rows[0]), rule] + [line(row) for row in rows[1:]]
    totals = info['totals']
    out += [
        '',
        f'checkpoint:           {info["path"]}',
        f'written by mmquant:   {info["mmquant_version"]}',
        f'quantized layers:     {totals["layers"]}',
        f'packed weights:       {_mib(totals["packed_bytes"])}',
        f'float32 weights:      {_mib(totals["float_bytes"])}  '
        f'ratio {_ratio(totals["ratio"])}',
        f'scales:               {_mib(totals["scale_bytes"])}',
        f'other tensors:        '
        f'{_mib(totals["other_bytes"] - totals["scale_bytes"])}',
        f'INT model tensors:    {_mib(totals["int_model_bytes"])}',
        f'float model tensors:  {_mib(totals["float_model_bytes"])}  '
        f'ratio {_ratio(totals["model_ratio"])}',
        f'file size:            {_mib(totals["file_bytes"])}',
    ]
    if info['meta']:
        out.append(f'meta keys:            {", ".join(sorted(info["meta"]))}')
    return '\n'.join(out)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the tool.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 if the file cannot be read.
    """
    args = parse_args(argv)
    try:
        info = inspect_quantized(args.checkpoint)
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        print(format_table(info))
    return 0


if __name__ == '__main__':
    sys.exit(main())
