"""Plot a quantization report: per-layer errors, error growth, sensitivity.

Example::

    python tools/analysis_tools/plot_report.py \
        work_dirs/fmnist_resnet_tiny/report.json --out report.png

See docs/analysis.md for how to read the figure.
"""
import argparse
import json
import os.path as osp
import sys

from mmquant.visualization import plot_report


def main() -> int:
    """Read the report, write the PNG; 2 on a file that is no report.

    Returns:
        int: The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('report', help='report.json written by '
                        'tools/ptq.py or QuantReport.save')
    parser.add_argument('--out', help='PNG to write (default: the report '
                        'with .png)')
    args = parser.parse_args()
    out = args.out or osp.splitext(args.report)[0] + '.png'
    try:
        with open(args.report) as f:
            report = json.load(f)
        plot_report(report, out)
    except (OSError, ValueError) as err:
        # json.JSONDecodeError is a ValueError
        print(f'plot_report: {args.report}: {err}', file=sys.stderr)
        return 2
    print(f'plot_report: wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
