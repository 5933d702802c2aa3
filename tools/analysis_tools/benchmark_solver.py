"""Benchmark mmquant's BitSplit solver against a direct port of the paper.

The *direct port* re-implements, from the math, what the paper's released
code computes in every round of its output-reconstruction step: 100 rounds,
each recomputing ``X B^T`` for the scale and, for every bit plane, the
residual ``Y - X B_others^T`` and ``T = Y_res^T X`` from the stored
calibration rows ``X``, followed by a Gauss-Seidel pass over the
coordinates with one ``A[n] @ B^T`` product per coordinate (float32, as the
paper's numpy code gets float32 activations).

mmquant's solver (:func:`mmquant.core.solver.bitsplit_solve`) works on the
float64 sufficient statistics ``A = X^T X``, ``C = X^T Y``, ``yy`` and stops
when nothing changes. It runs with each round schedule: ``mmquant`` is the
default (``'integer'``), ``paper`` the authors' update on the statistics
(``'paper'``, the same rounds as the direct port), ``canonical planes``
the ``'canonical-planes'`` schedule and ``canonical planes, then
integers`` the ``'canonical-planes+integer'`` schedule.

Both start from the same MSE round-to-nearest initialisation; both are
scored with the same exact float64 objective ``sum_m ||y_m - s_m X q_m||^2``.
The problems (:func:`mmquant.testing.make_layer_problem`) and the direct
port (:func:`mmquant.testing.direct_port`) live in :mod:`mmquant.testing`,
shared with the tests and ``benchmark_schedules.py``.

Timing: the direct port's rounds are timed one by one; besides the total
(or, for the large layer, the mean round extrapolated to 100 rounds), the
script reports a lower bound that load from other jobs on a shared machine
cannot inflate: 100 times its fastest round. mmquant runs ``--repeat``
times, spread before and after the direct port; the median is reported.

Usage::

    python tools/analysis_tools/benchmark_solver.py           # everything
    python tools/analysis_tools/benchmark_solver.py --quick   # a smoke run
    python tools/analysis_tools/benchmark_solver.py --sizes 256  # one layer
    python tools/analysis_tools/benchmark_solver.py --bits 2 8   # widths
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

from mmquant.core.rtn import mse_rtn
from mmquant.core.solver import bitsplit_solve, objective
from mmquant.testing import (direct_port, make_layer_problem, statistics_f64,
                             synchronize)

# result key -> (the solver's schedule, its label in the table)
SCHEDULE_RUNS = {
    'mmquant': ('integer', 'mmquant'),
    'mmquant_paper': ('paper', 'mmquant, paper'),
    'mmquant_planes': ('canonical-planes', 'mmquant, canonical planes'),
    'mmquant_planes_integer': ('canonical-planes+integer',
                               'mmquant, canonical planes, then integers')
}


def score(q, scale, A, C, yy) -> Dict:
    """Objective and relative output error of ``(q, scale)``."""
    obj = float(objective(q, scale, A, C, yy).sum())
    return dict(objective=obj, rel_err=math.sqrt(max(obj, 0.0) /
                                                 float(yy.sum())))


def run_problem(name: str, cin: int, cout: int, rows: int, bits_list,
                direct_rounds: Optional[int], extrapolate: bool,
                repeat: int, seed: int,
                device: str = 'cpu') -> List[Dict]:
    """Benchmark one layer problem; returns the table rows."""
    dev = torch.device(device)
    P = make_layer_problem(cin, cout, rows, seed)
    X, Y, W = (P[k].to(dev) for k in ('X', 'Y', 'W'))
    synchronize(dev)
    t = time.perf_counter()
    A, C, yy = statistics_f64(X, Y)
    synchronize(dev)
    stats_s = time.perf_counter() - t
    N = X.shape[1]
    print(f'\n{name}: N = {N}, M = {cout}, K = {X.shape[0]} rows; '
          f'float64 statistics A, C, yy: {stats_s:.2f} s (once per layer, '
          f'shared by all bit widths)', flush=True)
    out = []
    for bits in bits_list:
        q0, s0 = mse_rtn(W, bits)
        row = dict(problem=name, N=N, M=cout, K=X.shape[0], bits=bits,
                   stats_s=stats_s, rtn=score(q0, s0, A, C, yy))
        runs: Dict[str, List[float]] = {key: [] for key in SCHEDULE_RUNS}
        results = {}

        def solve_all() -> None:
            for label, (schedule, _) in SCHEDULE_RUNS.items():
                synchronize(dev)
                t = time.perf_counter()
                res = bitsplit_solve(W, A, C, bits, yy, schedule=schedule)
                synchronize(dev)
                runs[label].append(time.perf_counter() - t)
                results[label] = res

        # mmquant runs before and after the direct port (the machine may be
        # shared: the median of runs spread over the benchmark is reported)
        solve_all()
        if direct_rounds:
            d = direct_port(X, Y, W, bits, direct_rounds)
            ran = len(d['round_s'])
            measured = d['init_s'] + sum(d['round_s'])
            total = (d['init_s'] + 100 * statistics.mean(d['round_s'])
                     if extrapolate else measured)
            # a lower bound that load on a shared machine cannot inflate:
            # every one of the 100 rounds as fast as the fastest one
            bound = d['init_s'] + 100 * min(d['round_s'])
            row['direct'] = dict(time_s=total, measured_s=measured,
                                 bound_s=bound, rounds=ran,
                                 extrapolated=extrapolate,
                                 per_round_s=statistics.mean(d['round_s']),
                                 fastest_round_s=min(d['round_s']),
                                 **score(d['q'], d['scale'], A, C, yy))
            tag = (f'{ran} timed rounds -> 100 extrapolated'
                   if extrapolate else f'{ran} rounds')
            print(f'  W{bits} {"direct port":22s} {total:8.1f} s ({tag}; '
                  f'fastest round {min(d["round_s"]):.2f} s -> bound '
                  f'{bound:.1f} s)  rel. err {row["direct"]["rel_err"]:.5f}',
                  flush=True)
        for _ in range(repeat - 1):
            solve_all()
        for label, res in results.items():
            row[label] = dict(time_s=statistics.median(runs[label]),
                              times_s=runs[label], rounds=res.rounds,
                              **score(res.qweight, res.scale, A, C, yy))
            print(f'  W{bits} {label:22s} {row[label]["time_s"]:8.3f} s '
                  f'(runs: {", ".join(f"{t:.2f}" for t in runs[label])}) '
                  f'{res.rounds:4d} rounds  rel. err '
                  f'{row[label]["rel_err"]:.5f}', flush=True)
        out.append(row)
    return out


def table(rows: List[Dict]) -> str:
    """Markdown table of the results."""
    lines = [
        '| problem | W | method | rounds | time [s] | objective '
        '| rel. output error | speed-up | speed-up vs bound |',
        '|---|---|---|---|---|---|---|---|---|'
    ]
    for r in rows:
        prob = f'{r["problem"]} (N={r["N"]}, M={r["M"]}, K={r["K"]})'
        base = r.get('direct')
        entries = [('RTN (init)', dict(rounds='-', time_s=None, **r['rtn']))]
        if base is not None:
            lab = ('direct port, extrapolated' if base['extrapolated'] else
                   'direct port')
            entries.append((lab, base))
        for key, (_, lab) in SCHEDULE_RUNS.items():
            entries.append((lab, r[key]))
        for lab, e in entries:
            t = '-' if e['time_s'] is None else f'{e["time_s"]:.2f}'
            rounds, obj, err = e['rounds'], f'{e["objective"]:.6g}', \
                f'{e["rel_err"]:.5f}'
            speed = bound = '-'
            if lab.startswith('direct'):
                bound = f'(bound {base["bound_s"]:.1f} s)'
                if base['extrapolated']:
                    rounds = f'100 ({base["rounds"]} timed)'
                    obj += f' (after {base["rounds"]})'
                    err += f' (after {base["rounds"]})'
            if base is not None and lab.startswith('mmquant'):
                speed = f'{base["time_s"] / e["time_s"]:.0f}x'
                bound = f'{base["bound_s"] / e["time_s"]:.0f}x'
            lines.append(f'| {prob} | {r["bits"]} | {lab} | {rounds} | {t} '
                         f'| {obj} | {err} | {speed} | {bound} |')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='small smoke run (seconds)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--repeat', type=int, default=3,
                        help='mmquant runs per case (median reported)')
    parser.add_argument('--timed-rounds', type=int, default=3,
                        help='direct-port rounds timed on the large problem')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: torch\'s default)')
    parser.add_argument('--sizes', type=int, nargs='+', default=[256, 512],
                        choices=[256, 512],
                        help='which layers to run (channels in = out)')
    parser.add_argument('--bits', type=int, nargs='+', default=[4, 3, 2],
                        help='bit widths (default: 4 3 2)')
    parser.add_argument('--device', default='cpu',
                        help='where both solvers run (e.g. cuda)')
    parser.add_argument('--json', default=None, help='write results here')
    args = parser.parse_args(argv)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available')
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'machine: {platform.machine()}, {os.cpu_count()} CPUs, '
          f'{torch.get_num_threads()} torch threads, torch '
          f'{torch.__version__}, python {platform.python_version()}, load '
          f'average at start {os.getloadavg()[0]:.2f}, device {args.device}'
          + (f' ({torch.cuda.get_device_name(args.device)})'
             if args.device.startswith('cuda') else ''))
    rows: List[Dict] = []
    if args.quick:
        rows += run_problem('conv3x3 32->32', 32, 32, 1024, (4, 3), 100,
                            False, args.repeat, args.seed, args.device)
    else:
        if 256 in args.sizes:
            rows += run_problem('conv3x3 256->256', 256, 256, 8192,
                                args.bits, 100, False, args.repeat,
                                args.seed, args.device)
        if 512 in args.sizes:
            rows += run_problem('conv3x3 512->512', 512, 512, 16384,
                                args.bits, args.timed_rounds, True,
                                args.repeat, args.seed, args.device)
    print(f'\nload average at end {os.getloadavg()[0]:.2f}\n')
    print(table(rows))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
