"""Per-layer weight bit widths under an average-bits budget.

BitSplit's statistics ``(A, C, yy)`` of a layer serve every bit width, so
the integers of each layer at each candidate width cost one solve per
width (``QuantConfig(sensitivity=True)``). Each layer's error at each
width is then either (``allocation_metric``)

* ``'network'`` (default): ``D_l(b)``, the relative squared change of the
  network's outputs with that layer alone at width ``b``, measured on the
  first ``allocation_samples`` calibration samples
  (:mod:`mmquant.quantization.sensitivity`); or
* ``'layer'``: the layer's own relative squared output error
  ``objective_l(b) / ||Y_l||^2`` from its statistics (free, but blind to
  how far a layer's error travels through the network).

:func:`allocate_bits` picks one width per layer to minimise the sum of
these errors subject to the parameter-weighted average bits per weight: a
multiple-choice knapsack, solved exactly by dynamic programming over the
budget (see the function for the grid).
"""
import fnmatch
import glob
import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .config import QuantConfig
from .report import LayerReport, QuantReport

#: Steps of the budget grid when the exact integer grid is finer.
GRID_STEPS = 1 << 16


@dataclass
class Allocation:
    """The widths :func:`plan_mixed_precision` chose.

    Args:
        bits (dict): ``{layer: w_bits}`` of the layers it chose for.
        fixed (dict): ``{layer: w_bits}`` of the layers whose width the
            config fixes (``first_last_bits``, ``overrides``).
        target_bits (float): The requested average bits per weight.
        average_bits (float): The average of the chosen widths over all
            quantized layers, weighted by parameter count.
        error (float): The summed error of the chosen widths (the
            minimised objective) in the sensitivity pass.
        metric (str): The error minimised (``allocation_metric``).
        probe_samples (int, optional): Samples the ``'network'`` probe
            ran on.
    """

    bits: Dict[str, int]
    fixed: Dict[str, int]
    target_bits: float
    average_bits: float
    error: float
    metric: str = 'layer'
    probe_samples: Optional[int] = None

    def to_dict(self) -> Dict[str, object]:
        """The allocation as a JSON-able dict (for the report)."""
        return dict(bits=dict(self.bits), fixed=dict(self.fixed),
                    target_bits=self.target_bits,
                    average_bits=round(self.average_bits, 6),
                    error=self.error, metric=self.metric,
                    probe_samples=self.probe_samples)


def allocate_bits(errors: Sequence[Sequence[float]],
                  costs: Sequence[Sequence[int]],
                  budget: int) -> Tuple[List[int], float]:
    """Pick one option per item to minimise the summed error in budget.

    Dynamic programming over the budget: on the exact integer grid of the
    costs (divided by their greatest common divisor) when the budget has
    at most :data:`GRID_STEPS` steps of it, otherwise on a grid of
    :data:`GRID_STEPS` steps with every cost rounded *up* to it, so the
    result always fits the budget and loses at most ``len(errors)`` steps
    of it to the rounding. Of equal totals the one with the least cost
    wins, then the earlier option of the later item (deterministic).

    Args:
        errors (Sequence[Sequence[float]]): ``errors[i][k]``, the error of
            option ``k`` of item ``i``.
        costs (Sequence[Sequence[int]]): ``costs[i][k] >= 0``, its cost
            (here bits: parameters x width).
        budget (int): The largest allowed total cost.

    Returns:
        tuple: The chosen option of each item and the summed error.

    Raises:
        ValueError: If even the cheapest options exceed the budget, or on
            mismatched shapes.
    """
    if len(errors) != len(costs) or any(
            len(e) != len(c) or not e for e, c in zip(errors, costs)):
        raise ValueError('errors and costs need one non-empty row of the '
                         'same length per item')
    cheapest = sum(min(c) for c in costs)
    if cheapest > budget:
        raise ValueError(f'the budget ({budget}) is below the cheapest '
                         f'choice ({cheapest})')
    if not errors:
        return [], 0.0
    step = 0
    for row in costs:
        for c in row:
            step = math.gcd(step, int(c))
    step = step or 1
    if budget // step <= GRID_STEPS:
        steps = budget // step
        grid = [[int(c) // step for c in row] for row in costs]
    else:
        steps = GRID_STEPS
        unit = budget / GRID_STEPS
        grid = [[math.ceil(c / unit - 1e-9) for c in row] for row in costs]
    best = np.full(steps + 1, np.inf)
    best[0] = 0.0
    choice = np.zeros((len(errors), steps + 1), dtype=np.int16)
    for i, (row_e, row_c) in enumerate(zip(errors, grid)):
        new = np.full(steps + 1, np.inf)
        pick = np.zeros(steps + 1, dtype=np.int16)
        for k, (e, c) in enumerate(zip(row_e, row_c)):
            if c > steps:
                continue
            cand = np.full(steps + 1, np.inf)
            cand[c:] = best[:steps + 1 - c] + float(e)
            better = cand < new
            new[better] = cand[better]
            pick[better] = k
        best = new
        choice[i] = pick
    end = int(np.argmin(best))  # the first of equal totals: least budget
    total = float(best[end])
    picks = []
    for i in range(len(errors) - 1, -1, -1):
        k = int(choice[i, end])
        picks.append(k)
        end -= grid[i][k]
    picks.reverse()
    return picks, total


def free_layers(report: QuantReport, config: QuantConfig
                ) -> Tuple[List[LayerReport], Dict[str, int]]:
    """Split the quantized layers into free ones and fixed ones.

    A layer is *free* when the config does not fix its width: neither an
    input/output layer under ``first_last_bits`` nor matched by an
    ``overrides`` pattern that sets ``w_bits``. Fixed layers keep their
    width and count in the average.

    Args:
        report (QuantReport): The sensitivity pass's report.
        config (QuantConfig): The user's config.

    Returns:
        tuple: The free layers' reports (forward order) and ``{name:
        w_bits}`` of the fixed ones.
    """
    fixed: Dict[str, int] = {}
    free = []
    for rep in report.layers:
        if rep.w_bits is None:
            continue
        pinned = any(fnmatch.fnmatchcase(rep.name, p) and 'w_bits' in v
                     for p, v in config.overrides.items())
        if pinned or (rep.role and config.first_last_bits is not None):
            fixed[rep.name] = rep.w_bits
        else:
            free.append(rep)
    return free, fixed


def plan_mixed_precision(report: QuantReport, config: QuantConfig,
                         params: Mapping[str, int],
                         network: Optional[Mapping[str, Mapping[int, float]]]
                         = None,
                         probe_samples: Optional[int] = None) -> Allocation:
    """Choose each free layer's width (see :func:`free_layers`).

    Args:
        report (QuantReport): A run with ``sensitivity=True`` over
            ``config.candidate_bits``.
        config (QuantConfig): The user's config (``target_bits`` set).
        params (Mapping[str, int]): Weight parameters per layer name.
        network (Mapping, optional): ``{name: {bits: D_l(b)}}`` of every
            free layer, the ``'network'`` errors; ``None``: the layers'
            own errors (``'layer'``).
        probe_samples (int, optional): Samples of the network probe (for
            the record).

    Returns:
        Allocation: The chosen widths.

    Raises:
        ValueError: If the target is below what the fixed layers and the
            narrowest candidate allow.
    """
    target = float(config.target_bits)
    layers = [r for r in report.layers if r.w_bits is not None]
    free, fixed = free_layers(report, config)
    total_params = sum(params[r.name] for r in layers)
    budget = math.floor(target * total_params) - sum(
        params[n] * b for n, b in fixed.items())
    cands = list(config.candidate_bits)
    if network is None:
        errors = [[float(r.sensitivity[str(b)]) ** 2 for b in cands]
                  for r in free]
    else:
        errors = [[float(network[r.name][b]) for b in cands] for r in free]
    costs = [[params[r.name] * b for b in cands] for r in free]
    narrowest = (sum(params[n] * b for n, b in fixed.items())
                 + min(cands) * sum(params[r.name] for r in free))
    if budget < sum(min(c) for c in costs):
        raise ValueError(
            f'target_bits={target} is below the smallest average this '
            f'model allows ({narrowest / total_params:.3f} bits per '
            f'weight: candidates {cands}, and {len(fixed)} layer(s) whose '
            'width first_last_bits/overrides fix)')
    picks, error = allocate_bits(errors, costs, budget)
    bits = {r.name: cands[k] for r, k in zip(free, picks)}
    used = sum(params[n] * b for n, b in {**fixed, **bits}.items())
    return Allocation(bits=bits, fixed=fixed, target_bits=target,
                      average_bits=used / max(total_params, 1),
                      error=error,
                      metric='layer' if network is None else 'network',
                      probe_samples=probe_samples)


def allocation_overrides(allocation: Allocation,
                         config: QuantConfig) -> Dict[str, Dict]:
    """The config overrides that give each free layer its chosen width.

    The layer names are escaped for :mod:`fnmatch`; the user's overrides
    come after them (and win where they set other keys).

    Args:
        allocation (Allocation): The chosen widths.
        config (QuantConfig): The user's config.

    Returns:
        dict: The ``overrides`` of the final run.
    """
    out: Dict[str, Dict[str, Optional[int]]] = {
        glob.escape(name): dict(w_bits=bits)
        for name, bits in allocation.bits.items()}
    out.update(config.overrides)
    return out
