"""``python -m mmquant TOOL [ARGS...]``: run a tool mmquant ships.

Works from any directory on an installed package, like OpenMMLab's
``mim run``::

    python -m mmquant ptq CONFIG CKPT --w-bits 4
    python -m mmquant test CONFIG INT_CKPT
    python -m mmquant deploy/export_onnx CONFIG INT_CKPT --out model.onnx
    python -m mmquant --list

``TOOL`` is a path below ``tools/`` without ``.py`` (``ptq``,
``analysis_tools/plot_report``) or a file name when it is unique
(``export_onnx``); the tool gets ``ARGS`` as its command line. The
``mmquant`` console script installed with the package does the same.
"""
import sys
from typing import List, Optional

from mmquant.mim import find_tool, list_tools, run_tool

USAGE = ('usage: python -m mmquant TOOL [ARGS...]  '
         '(python -m mmquant --list shows the tools)')


def main(argv: Optional[List[str]] = None) -> int:
    """Run the tool named by the first argument with the others.

    Args:
        argv (list[str], optional): The command line without the program
            (default: ``sys.argv[1:]``).

    Returns:
        int: The exit status: 0 after ``--list`` or ``--help``, 2 for a
        missing or unknown tool; a tool that exits raises ``SystemExit``
        with its own status, and one that returns gives 0.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    if args[0] in ('-h', '--help'):
        print(USAGE)
        return 0
    if args[0] == '--list':
        print('\n'.join(list_tools()))
        return 0
    try:
        find_tool(args[0])
    except ValueError as err:
        print(f'python -m mmquant: error: {err}', file=sys.stderr)
        return 2
    run_tool(args[0], args[1:])
    return 0


if __name__ == '__main__':
    sys.exit(main())
