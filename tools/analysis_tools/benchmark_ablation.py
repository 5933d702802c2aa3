"""Ablate BitSplit's settings on a benchmark list, as Markdown tables.

Runs every variant of an ablation list (``variants``: named quantizer
settings) in fast and error-compensated mode at each bit width for every
model, writes ``<work_dir>/ablation.json`` after every run and
``ablation.md``, and optionally regenerates the marked section of
Markdown pages.

Examples::

    # the committed ablation (docs/solver.md, configs/bitsplit/README.md)
    python tools/analysis_tools/benchmark_ablation.py \\
        configs/benchmarks/fmnist_ablation.py \\
        --baseline configs/bitsplit/results/fmnist_offline.json \\
        --doc docs/solver.md configs/bitsplit/README.md

    # models in parallel processes, then one table
    python tools/analysis_tools/benchmark_ablation.py \\
        configs/benchmarks/fmnist_ablation.py \\
        --models 'RetinaNet ResNet-18 (12 ch)' --work-dir work_dirs/abl_det
    python tools/analysis_tools/benchmark_ablation.py \\
        configs/benchmarks/fmnist_ablation.py \\
        --merge work_dirs/abl_det work_dirs/abl_cls --doc docs/solver.md

    # re-render the pages from the committed results, no runs
    python tools/analysis_tools/benchmark_ablation.py \\
        configs/benchmarks/fmnist_ablation.py \\
        --results configs/bitsplit/results/fmnist_ablation.json \\
        --doc docs/solver.md configs/bitsplit/README.md
"""
import argparse
import os.path as osp
import shlex
import sys
import time

from mmengine.logging import MMLogger

from mmquant.apis.benchmark import (
    ABLATION_END, ABLATION_MODES, ABLATION_START, load_ablation,
    load_benchmark_list, load_variants, merge_ablations, render_ablation,
    run_ablation, save_ablation, select_models, update_readme)
from mmquant.fileio import write_text_atomic


def parse_args() -> argparse.Namespace:
    """Parse the command line.

    Returns:
        argparse.Namespace: The arguments.
    """
    parser = argparse.ArgumentParser(
        description='Ablate quantizer settings (tables for the docs)')
    parser.add_argument('ablation', help='ablation list config (a '
                        'benchmark list with `variants`)')
    parser.add_argument('--work-dir', help='output folder (default: '
                        'work_dirs/ablation/<list name>)')
    parser.add_argument('--models', nargs='+', help='run only these model '
                        'names of the list')
    parser.add_argument('--variants', nargs='+', help='run only these '
                        'variant names, in this order (the tables keep all '
                        'columns)')
    parser.add_argument('--modes', nargs='+', choices=ABLATION_MODES,
                        help="modes (default: the list's or both)")
    parser.add_argument('--bits', nargs='+', help="bit widths, e.g. w4a8 "
                        "(default: the list's)")
    parser.add_argument('--calib-samples', type=int,
                        help="calibration images (default: the list's or "
                        '256)')
    parser.add_argument('--eval-samples', type=int,
                        help='evaluate on the first N test samples only')
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--baseline', metavar='RESULTS', help='a benchmark '
                        'results.json measured with the same sample '
                        'counts: its float rows and its rows of the '
                        'models\' own settings stand for the first variant '
                        'instead of running them')
    parser.add_argument('--resume', action='store_true',
                        help='keep the runs of an earlier ablation.json')
    parser.add_argument('--merge', nargs='+', metavar='JSON',
                        help='ablation.json files (or their work dirs) of '
                        'parallel runs: merged into this work dir\'s '
                        'ablation.json, then rendered (no runs)')
    parser.add_argument('--results', metavar='JSON', help='render this '
                        'ablation JSON (e.g. the committed one); no runs')
    parser.add_argument('--doc', nargs='+', default=[], metavar='MD',
                        help='Markdown pages whose section between '
                        f'{ABLATION_START} and {ABLATION_END} is '
                        'regenerated')
    args = parser.parse_args()
    if sum(map(bool, (args.merge, args.results))) > 1:
        parser.error('--merge and --results do not combine')
    return args


def main() -> None:
    """Run (or merge, or render) the ablation and write the tables."""
    args = parse_args()
    logger = MMLogger.get_instance('mmquant', log_level='INFO')
    models, lst = load_benchmark_list(args.ablation)
    variants = load_variants(lst)
    try:
        models = select_models(models, args.models)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    run_variants = variants
    if args.variants:
        unknown = sorted(set(args.variants) - {v.name for v in variants})
        if unknown:
            raise SystemExit(f'unknown variant name(s) {unknown}; the list '
                             f'has {[v.name for v in variants]}')
        # in the order given: the first finish first
        by_name = {v.name: v for v in variants}
        run_variants = [by_name[n] for n in dict.fromkeys(args.variants)]
    name = osp.splitext(osp.basename(args.ablation))[0]
    work_dir = args.work_dir or osp.join('work_dirs', 'ablation', name)
    path = osp.join(work_dir, 'ablation.json')
    command = ('python tools/analysis_tools/benchmark_ablation.py '
               + ' '.join(shlex.quote(a) for a in sys.argv[1:]))
    if args.results:
        rows, info = load_ablation(args.results)
    elif args.merge:
        parts = [osp.join(p, 'ablation.json') if osp.isdir(p) else p
                 for p in args.merge]
        rows, info = merge_ablations(parts)
        save_ablation(path, rows, info)
        logger.info(f'mmquant.ablation: merged {parts} into {path}')
    else:
        baseline = None
        if args.baseline:
            baseline = (args.baseline, variants[0].name)
        rows = run_ablation(
            models, run_variants,
            args.modes or lst.get('modes', list(ABLATION_MODES)),
            args.bits or lst.get('bits'), work_dir,
            calib_samples=args.calib_samples or lst.get(
                'calib_samples', 256),
            eval_samples=args.eval_samples or lst.get('eval_samples'),
            device=args.device, resume=args.resume, baseline=baseline,
            info=dict(command=command, started=time.strftime(
                '%Y-%m-%d %H:%M:%S %Z')))
        rows, info = load_ablation(path)
    text = render_ablation(rows, variants, info)
    if not args.results:
        write_text_atomic(osp.join(work_dir, 'ablation.md'), text)
        logger.info(f'mmquant.ablation: tables in '
                    f'{osp.join(work_dir, "ablation.md")}')
    for doc in args.doc:
        update_readme(doc, text, ABLATION_START, ABLATION_END)
        logger.info(f'mmquant.ablation: {doc} updated')


if __name__ == '__main__':
    main()
