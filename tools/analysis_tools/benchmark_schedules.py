"""Compare the solver's round schedules on many generated layer problems.

For every problem (the generator of ``benchmark_solver.py``,
:func:`mmquant.testing.make_layer_problem`: post-ReLU-like, correlated 3x3
conv inputs) and bit width, solves with each
schedule of :data:`mmquant.core.solver.SCHEDULES` from the same MSE-RTN
start and reports the objective relative to a reference schedule
(``canonical-planes+integer`` by default; ``--reference paper``
compares with the authors' update) and the rounds. The summary gives, per
schedule, the mean and range of the relative objective, on how many
problems it is lower than the reference and the mean rounds.

Usage::

    python tools/analysis_tools/benchmark_schedules.py   # 60 problems
    python tools/analysis_tools/benchmark_schedules.py --json schedules.json
"""
import argparse
import json
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

from mmquant.core.solver import SCHEDULES, bitsplit_solve
from mmquant.fileio import write_text_atomic
from mmquant.testing import make_layer_problem, statistics_f64

# (channels in, channels out, im2col rows)
SIZES = {
    16: (16, 32, 2048),
    32: (32, 64, 4096),
    64: (64, 64, 4096),
    128: (128, 128, 8192),
}


def compare(sizes: List[int], seeds: int, bits_list: List[int],
            reference: str) -> List[Dict]:
    """Solve every problem with every schedule.

    Args:
        sizes: Keys of :data:`SIZES`.
        seeds: Problems per size (seeds ``0 .. seeds - 1``).
        bits_list: Bit widths.
        reference: The schedule the objectives are relative to.

    Returns:
        list[dict]: One row per problem and width: ``objective``,
        ``rounds`` and ``time_s`` per schedule, ``rel`` (objective over the
        reference's, minus one).
    """
    rows = []
    total = len(sizes) * seeds * len(bits_list)
    start = time.perf_counter()
    for size in sizes:
        cin, cout, n_rows = SIZES[size]
        for seed in range(seeds):
            P = make_layer_problem(cin, cout, n_rows, seed)
            A, C, yy = statistics_f64(P['X'], P['Y'])
            for bits in bits_list:
                row = dict(cin=cin, cout=cout, seed=seed, bits=bits,
                           objective={}, rounds={}, time_s={})
                for schedule in SCHEDULES:
                    t = time.perf_counter()
                    res = bitsplit_solve(P['W'], A, C, bits, yy,
                                         schedule=schedule)
                    row['time_s'][schedule] = time.perf_counter() - t
                    row['objective'][schedule] = float(res.objective.sum())
                    row['rounds'][schedule] = res.rounds
                ref = row['objective'][reference]
                row['rel'] = {k: v / ref - 1
                              for k, v in row['objective'].items()}
                rows.append(row)
                done = len(rows)
                eta = (time.perf_counter() - start) / done * (total - done)
                print(f'[{done}/{total}, ETA {eta:.0f} s] {cin}->{cout} '
                      f'seed {seed} W{bits}: ' + '  '.join(
                          f'{k} {row["rel"][k]:+.4f} '
                          f'({row["rounds"][k]} rounds)'
                          for k in SCHEDULES), flush=True)
    return rows


def summary(rows: List[Dict], reference: str) -> str:
    """Markdown summary per schedule (W2 rows excluded from the counts of
    lower/higher, where every schedule coincides)."""
    lines = [
        f'| schedule | mean objective vs {reference} | range | lower / '
        'equal / higher (W>2) | mean rounds | mean time [s] |',
        '|---|---|---|---|---|---|'
    ]
    for k in SCHEDULES:
        rel = [r['rel'][k] for r in rows]
        wide = [r['rel'][k] for r in rows if r['bits'] > 2]
        lower = sum(v < -1e-12 for v in wide)
        higher = sum(v > 1e-12 for v in wide)
        lines.append(
            f'| {k} | {statistics.mean(rel):+.2%} | {min(rel):+.2%} to '
            f'{max(rel):+.2%} | {lower} / {len(wide) - lower - higher} / '
            f'{higher} | {statistics.mean(r["rounds"][k] for r in rows):.1f}'
            f' | {statistics.mean(r["time_s"][k] for r in rows):.3f} |')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+',
                        default=sorted(SIZES), choices=sorted(SIZES),
                        help='layers (input channels) to generate')
    parser.add_argument('--seeds', type=int, default=3,
                        help='problems per size')
    parser.add_argument('--bits', type=int, nargs='+',
                        default=[2, 3, 4, 5, 8])
    parser.add_argument('--reference', default='canonical-planes+integer',
                        choices=SCHEDULES)
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads (default 1)')
    parser.add_argument('--json', default=None, help='write rows here')
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error('--seeds must be >= 1')
    torch.set_num_threads(args.threads)
    rows = compare(args.sizes, args.seeds, args.bits, args.reference)
    print()
    print(summary(rows, args.reference))
    if args.json:
        write_text_atomic(args.json, json.dumps(rows, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
