"""Verify an mmquant INT checkpoint and print its layers, bits and sizes.

The file gets every check loading it makes without a model (checksums,
tensor names, layer records, packed sizes, integer codes, scales); the
exit status is 0 only if all pass. Every string taken from the file is
printed with control and other non-printable characters escaped.

Example::

    python tools/inspect_checkpoint.py work_dirs/resnet18_w4.pth
    python tools/inspect_checkpoint.py work_dirs/resnet18_w4.pth --json
"""
import argparse
import json
import sys
import warnings
from typing import Any, Dict, List, Optional

from mmquant.checkpoint import CheckpointError, inspect_quantized

_HEADER = ('layer', 'type', 'bits W/A', 'shape', 'packed bytes',
           'float bytes', 'ratio')
_RIGHT = (False, False, False, False, True, True, True)
#: The last line of a successful run.
VERDICT = ('all checks passed: checksums, tensor names, meta, layer '
           'records, packed sizes, integer codes, scales')


def escape(value: Any) -> str:
    """Render a value as text that is safe to print on a terminal.

    Backslashes are doubled and every non-printable character (control
    characters such as ESC, CR and LF, format characters such as bidi
    overrides, line/paragraph separators, surrogates, unassigned code
    points) is written as a Python-style escape (``\\x1b``, ``\\u202e``),
    so text from a file can neither drive the terminal nor start a line.

    Args:
        value: Anything; non-strings are converted with ``str``.

    Returns:
        The escaped text, on one line.
    """
    out = []
    for ch in str(value):
        code = ord(ch)
        if ch == '\\':
            out.append('\\\\')
        elif ch == ' ' or ch.isprintable():
            out.append(ch)
        elif code < 0x100:
            out.append(f'\\x{code:02x}')
        elif code < 0x10000:
            out.append(f'\\u{code:04x}')
        else:
            out.append(f'\\U{code:08x}')
    return ''.join(out)


def escape_json(text: str) -> str:
    """Escape the non-printable characters that JSON text leaves raw.

    ``json.dumps(..., ensure_ascii=False)`` escapes C0 control characters
    but writes DEL, C1 controls (e.g. U+009B, a one-byte CSI), format
    characters and lone surrogates as they are. They are replaced by
    ``\\uXXXX`` escapes (surrogate pairs beyond U+FFFF), which keep the
    JSON valid and equal; the line breaks of the indentation stay.

    Args:
        text: JSON text.

    Returns:
        The same JSON with only printable characters and line breaks.
    """
    out = []
    for ch in text:
        if ch in ' \n' or ch.isprintable():
            out.append(ch)
            continue
        code = ord(ch)
        if code < 0x10000:
            out.append(f'\\u{code:04x}')
        else:
            code -= 0x10000
            out.append(f'\\u{0xd800 + (code >> 10):04x}'
                       f'\\u{0xdc00 + (code & 0x3ff):04x}')
    return ''.join(out)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description='Verify an mmquant INT checkpoint as loading does and '
        'print per-layer bits, shapes and sizes, and totals against '
        'float32; exits 1 if any check fails')
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
        rows.append((escape(layer['name']), escape(layer['layer_type']),
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
        f'checkpoint:           {escape(info["path"])}',
        f'written by mmquant:   {escape(info["mmquant_version"])}',
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
        keys = ', '.join(escape(key) for key in sorted(info['meta']))
        out.append(f'meta keys:            {keys}')
    return '\n'.join(out)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the tool.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The exit status: 0 if every check passes, 1 if the file cannot be
        read or fails a check (2 for a bad command line, from argparse).
    """
    args = parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            info = inspect_quantized(args.checkpoint)
        except CheckpointError as e:
            print(f'error: {escape(e)}', file=sys.stderr)
            return 1
    for warning in caught:
        print(f'warning: {escape(warning.message)}', file=sys.stderr)
    if args.json:
        print(escape_json(json.dumps(info, indent=2, ensure_ascii=False)))
    else:
        print(format_table(info))
        print(VERDICT)
    return 0


if __name__ == '__main__':
    sys.exit(main())
