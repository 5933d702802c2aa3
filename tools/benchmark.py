"""Float vs RTN vs BitSplit at several bit widths, as one results table.

Runs {float, RTN, BitSplit fast, BitSplit error-compensated} x {W8A8, W4A8,
W3A8, W2A8} (configurable) for every model of a benchmark list, writes
``<work_dir>/results.json`` (after every run) and ``results.md``, and
optionally regenerates the Results section of an algorithm README and its
``metafile.yml``.

Examples::

    # the offline Fashion-MNIST suite (see configs/benchmarks/)
    python tools/benchmark.py configs/benchmarks/fmnist_offline.py \
        --readme configs/bitsplit/README.md \
        --metafile configs/bitsplit/metafile.yml

    # ImageNet / COCO, for users who have the data and checkpoints
    python tools/benchmark.py configs/benchmarks/in1k_coco.py \
        --data-root /data/imagenet --models ResNet-18 --device cuda

    # models run in parallel in their own work dirs, then one table
    python tools/benchmark.py configs/benchmarks/fmnist_offline.py \
        --render-only --merge work_dirs/benchmark/resnet_only

    # re-render the tables from an earlier results.json, no runs
    python tools/benchmark.py configs/benchmarks/fmnist_offline.py \
        --render-only --readme configs/bitsplit/README.md
"""
import argparse
import os.path as osp
import shlex
import sys
import time

from mmengine.logging import MMLogger

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmquant.apis.benchmark import (  # noqa: E402
    DEFAULT_BITS, METHODS, check_methods, load_benchmark_list,
    load_results, merge_results, parse_bits, render_header,
    render_markdown, run_benchmark, save_results, update_readme,
    write_metafile)
from mmquant.fileio import write_text_atomic  # noqa: E402


def parse_args() -> argparse.Namespace:
    """Parse the command line.

    Returns:
        argparse.Namespace: The arguments.
    """
    parser = argparse.ArgumentParser(
        description='Benchmark float vs quantized models (tables for the '
        'README)')
    parser.add_argument('benchmark', help='benchmark list config '
                        '(`models = [dict(name, config, checkpoint, '
                        'dataset)]`)')
    parser.add_argument('--work-dir', help='output folder (default: '
                        'work_dirs/benchmark/<list name>)')
    parser.add_argument('--models', nargs='+', help='run only these model '
                        'names of the list')
    parser.add_argument('--methods', nargs='+', choices=sorted(METHODS),
                        help='methods (default: the list\'s or all)')
    parser.add_argument('--bits', nargs='+', help="bit widths, e.g. w4a8 "
                        f"(default: the list's or {' '.join(DEFAULT_BITS)})")
    parser.add_argument('--calib-samples', type=int,
                        help='calibration images (default: the list\'s or '
                        '256)')
    parser.add_argument('--eval-samples', type=int,
                        help='evaluate on the first N test samples only')
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--data-root', help="replace every config's "
                        '`data_root` (e.g. your ImageNet or COCO folder)')
    parser.add_argument('--resume', action='store_true',
                        help='keep the runs of an earlier results.json')
    parser.add_argument('--render-only', action='store_true',
                        help='only render an earlier results.json')
    parser.add_argument('--merge', nargs='+', metavar='RESULTS',
                        help='results.json files (or their work dirs) of '
                        'runs made in parallel: merged into this work '
                        "dir's results.json before rendering")
    parser.add_argument('--readme', help='README whose marked Results '
                        'section is regenerated')
    parser.add_argument('--metafile', help='metafile.yml to regenerate')
    return parser.parse_args()


def main() -> None:
    """Run the benchmark and write the tables."""
    args = parse_args()
    logger = MMLogger.get_instance('mmquant', log_level='INFO')
    models, lst = load_benchmark_list(args.benchmark)
    if args.models:
        names = {m.name for m in models}
        unknown = sorted(set(args.models) - names)
        if unknown:
            raise SystemExit(f'unknown model name(s) {unknown}; the list '
                             f'has {sorted(names)}')
        models = [m for m in models if m.name in args.models]
    methods = check_methods(args.methods or lst.get('methods',
                                                     list(METHODS)))
    bits = args.bits or list(lst.get('bits', DEFAULT_BITS))
    for tag in bits:
        parse_bits(tag)
    work_dir = args.work_dir or osp.join(
        'work_dirs', 'benchmark',
        osp.splitext(osp.basename(args.benchmark))[0])
    results = osp.join(work_dir, 'results.json')
    command = 'python tools/benchmark.py ' + ' '.join(
        shlex.quote(a) for a in sys.argv[1:])
    if args.merge:
        parts = [osp.join(p, 'results.json') if osp.isdir(p) else p
                 for p in args.merge]
        rows, info = merge_results(
            ([results] if osp.exists(results) else []) + parts)
        save_results(results, rows, info)
        logger.info(f'mmquant.benchmark: merged {parts} into {results}')
    if args.render_only:
        rows, info = load_results(results)
    else:
        info = dict(command=command, started=time.strftime(
            '%Y-%m-%d %H:%M:%S %Z'))
        rows = run_benchmark(
            models, methods, bits, work_dir,
            calib_samples=args.calib_samples or lst.get(
                'calib_samples', 256),
            eval_samples=args.eval_samples or lst.get('eval_samples'),
            device=args.device, data_root=args.data_root,
            resume=args.resume, info=info)
        rows, info = load_results(results)
    md_path = osp.join(work_dir, 'results.md')
    header = render_header(info, command, rows)
    write_text_atomic(md_path, header + render_markdown(
        rows, osp.dirname(md_path)))
    logger.info(f'mmquant.benchmark: tables in {md_path}')
    if args.readme:
        update_readme(args.readme, header + render_markdown(
            rows, osp.dirname(args.readme)))
        logger.info(f'mmquant.benchmark: Results of {args.readme} updated')
    if args.metafile:
        readme = args.readme or osp.join(osp.dirname(args.metafile),
                                         'README.md')
        write_metafile(args.metafile, rows, readme)
        logger.info(f'mmquant.benchmark: {args.metafile} written')


if __name__ == '__main__':
    main()
