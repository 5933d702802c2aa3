"""Float vs RTN vs BitSplit at several bit widths, as one results table.

Runs {float, RTN, BitSplit fast, BitSplit error-compensated} x {W8A8, W4A8,
W3A8, W2A8} (configurable) for every model of a benchmark list, writes
``<work_dir>/results.json`` (after every run) and ``results.md``, and
optionally regenerates the Results section of an algorithm README and its
``metafile.yml``.

Examples::

    # the offline Fashion-MNIST suite (see configs/benchmarks/)
    python tools/analysis_tools/benchmark.py \\
        configs/benchmarks/fmnist_offline.py \\
        --readme configs/bitsplit/README.md \\
        --metafile configs/bitsplit/metafile.yml

    # ImageNet / COCO, for users who have the data and checkpoints
    python tools/analysis_tools/benchmark.py \\
        configs/benchmarks/in1k_coco.py \\
        --data-root /data/imagenet --models ResNet-18 --device cuda

    # models run in parallel in their own work dirs, then one table
    python tools/analysis_tools/benchmark.py \\
        configs/benchmarks/fmnist_offline.py \\
        --render-only --merge work_dirs/benchmark/resnet_only

    # re-render the tables from an earlier results.json, no runs
    python tools/analysis_tools/benchmark.py \\
        configs/benchmarks/fmnist_offline.py \\
        --render-only --readme configs/bitsplit/README.md

    # regenerate the committed README section, metafile and entry configs
    # from the committed results (byte for byte)
    python tools/analysis_tools/benchmark.py \\
        configs/benchmarks/fmnist_offline.py \\
        --results configs/bitsplit/results/fmnist_offline.json \\
        --readme configs/bitsplit/README.md \\
        --metafile configs/bitsplit/metafile.yml

    # regression check: re-run the committed entries, exit 1 when a metric
    # fell more than 0.3 points (exit 3 when nothing could be checked)
    python tools/analysis_tools/benchmark.py \\
        configs/benchmarks/fmnist_offline.py \\
        --check configs/bitsplit/metafile.yml --tolerance 0.3
"""
import argparse
import os.path as osp
import shlex
import sys
import time

from mmengine.logging import MMLogger

from mmquant.apis.benchmark import (
    DEFAULT_BITS, METHODS, check_benchmark, check_methods,
    load_benchmark_list, load_results, merge_results, parse_bits,
    render_check, render_header, render_markdown, run_benchmark,
    save_results, select_models, update_readme, write_entry_configs,
    write_metafile)
from mmquant.fileio import write_text_atomic


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
    parser.add_argument('--metafile', help='metafile.yml to regenerate '
                        "(and the entry configs, in the list's "
                        '`entry_configs` folder)')
    parser.add_argument('--results', metavar='RESULTS', help='render from '
                        'this results JSON (e.g. the committed one) instead '
                        'of running; nothing is written to the work dir')
    check = parser.add_argument_group(
        'regression check (docs/benchmarks.md)')
    check.add_argument('--check', metavar='METAFILE', help='re-run the '
                       'entries of this metafile or model-index.yml that '
                       'are runs of the list and compare with their '
                       'committed Results')
    check.add_argument('--tolerance', type=float, default=0.3,
                       help='largest allowed drop below a committed value, '
                       'in the metric\'s points (top-1 %%, box AP x 100; '
                       'default 0.3)')
    check.add_argument('--min-checked', type=int, default=1,
                       help='fail (exit 3) when fewer entries were '
                       'compared (default 1: a check that compared '
                       'nothing fails)')
    check.add_argument('--strict', action='store_true', help='fail (exit '
                       '3) when any selected entry was skipped (missing '
                       'config, checkpoint or data, or no committed value)')
    args = parser.parse_args()
    if args.check and (args.readme or args.metafile or args.render_only
                       or args.merge or args.results):
        parser.error('--check writes no tables: it does not combine with '
                     '--readme, --metafile, --render-only, --merge or '
                     '--results')
    if args.results and (args.merge or args.resume):
        parser.error('--results renders a given file: it does not combine '
                     'with --merge or --resume')
    return args


def run_check(args: argparse.Namespace, models: list, methods: list,
              bits: list, lst: dict, work_dir: str, command: str) -> int:
    """Run ``--check``: print and save the table, return the exit status.

    Args:
        args (argparse.Namespace): The arguments.
        models (list): The selected models of the list.
        methods (list): The methods to check.
        bits (list): The bit widths to check.
        lst (dict): The benchmark list config.
        work_dir (str): Output folder.
        command (str): The command line, for the results JSON.

    Returns:
        int: 0, 1 (a metric below tolerance) or 3 (too few checked).
    """
    report = check_benchmark(
        models, methods, bits, args.check, work_dir,
        tolerance=args.tolerance,
        calib_samples=args.calib_samples, eval_samples=args.eval_samples,
        default_calib_samples=lst.get('calib_samples', 256),
        default_eval_samples=lst.get('eval_samples'), device=args.device,
        data_root=args.data_root, resume=args.resume,
        info=dict(command=command, started=time.strftime(
            '%Y-%m-%d %H:%M:%S %Z')))
    text = render_check(report, args.min_checked, args.strict)
    write_text_atomic(osp.join(work_dir, 'check.md'), text)
    print(text, end='')
    return report.exit_code(args.min_checked, args.strict)


def main() -> None:
    """Run the benchmark and write the tables."""
    args = parse_args()
    logger = MMLogger.get_instance('mmquant', log_level='INFO')
    models, lst = load_benchmark_list(args.benchmark)
    try:
        models = select_models(models, args.models)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    methods = check_methods(args.methods
                            or lst.get('methods', list(METHODS)))
    bits = args.bits or list(lst.get('bits', DEFAULT_BITS))
    for tag in bits:
        parse_bits(tag)
    list_name = osp.splitext(osp.basename(args.benchmark))[0]
    work_dir = args.work_dir or osp.join(
        'work_dirs', 'benchmark',
        list_name + ('_check' if args.check else ''))
    results = osp.join(work_dir, 'results.json')
    command = 'python tools/analysis_tools/benchmark.py ' + ' '.join(
        shlex.quote(a) for a in sys.argv[1:])
    if args.check:
        sys.exit(run_check(args, models, methods, bits, lst, work_dir,
                           command))
    if args.merge:
        parts = [osp.join(p, 'results.json') if osp.isdir(p) else p
                 for p in args.merge]
        rows, info = merge_results(
            ([results] if osp.exists(results) else []) + parts)
        save_results(results, rows, info)
        logger.info(f'mmquant.benchmark: merged {parts} into {results}')
    if args.results:
        rows, info = load_results(args.results)
    elif args.render_only:
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
    header = render_header(info, command, rows)
    entry_dir = None
    if args.readme or args.metafile:
        # the configs that reproduce each quantized row by themselves
        entry_dir = lst.get('entry_configs') or osp.join(
            osp.dirname(args.metafile or args.readme), list_name)
        written = write_entry_configs(rows, entry_dir)
        logger.info(f'mmquant.benchmark: {len(written)} entry configs in '
                    f'{entry_dir}')
    if not args.results:
        md_path = osp.join(work_dir, 'results.md')
        write_text_atomic(md_path, header + render_markdown(
            rows, osp.dirname(md_path), entry_dir))
        logger.info(f'mmquant.benchmark: tables in {md_path}')
    if args.readme:
        update_readme(args.readme, header + render_markdown(
            rows, osp.dirname(args.readme), entry_dir))
        logger.info(f'mmquant.benchmark: Results of {args.readme} updated')
    if args.metafile:
        readme = args.readme or osp.join(osp.dirname(args.metafile),
                                         'README.md')
        write_metafile(args.metafile, rows, readme, info, entry_dir)
        logger.info(f'mmquant.benchmark: {args.metafile} written')


if __name__ == '__main__':
    from mmquant.allocator import keep_freed_memory
    keep_freed_memory()  # a one-shot command: see mmquant/allocator.py
    main()
