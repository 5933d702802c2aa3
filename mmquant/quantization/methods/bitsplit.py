"""BitSplit: output reconstruction from a layer's statistics."""
import math
from typing import Callable

import torch
from torch import Tensor

from mmquant.core.rtn import mse_rtn_float64
from mmquant.core.solver import check_schedule, solve_layer
from mmquant.core.stats import StatsAccumulator
from .base import LayerJob, LayerResult, WeightMethod, register_weight_method


@register_weight_method
class BitSplitMethod(WeightMethod):
    """The BitSplit solver (Wang et al., ICML 2020) on ``(A, C, yy)``.

    The integers and scales minimise the layer's output error
    ``|Y - X W_q^T|^2`` plus a ridge ``lam |W - W_q|^2`` towards the float
    weights (see :func:`damp`), by the rounds of ``schedule`` from the
    MSE round-to-nearest start (:func:`mmquant.core.solver.solve_layer`).
    The reported errors are true output errors, without the ridge.

    Args:
        schedule (str): The solver's rounds (see
            :data:`mmquant.core.solver.SCHEDULES`).
        max_rounds (int): Cap on the solver's rounds.
        damping (float): Relative ridge strength; 0 disables it.
        damping_scales_with_rows (bool): Grow the ridge with ``N / rows``.
    """

    name = 'bitsplit'
    needs_statistics = True
    options = ('schedule', 'max_rounds', 'damping',
               'damping_scales_with_rows')

    def __init__(self,
                 schedule: str = 'integer',
                 max_rounds: int = 100,
                 damping: float = 0.1,
                 damping_scales_with_rows: bool = True) -> None:
        self.schedule = check_schedule(schedule)
        self.max_rounds = int(max_rounds)
        self.damping = float(damping)
        self.damping_scales_with_rows = bool(damping_scales_with_rows)

    def solve(self, job: LayerJob) -> LayerResult:
        """Solve one layer from ``job.stats`` (which it damps in place).

        Args:
            job (LayerJob): The layer's problem, with statistics.

        Returns:
            LayerResult: Integers, scales, output errors of the RTN start
            and of the result, and (``job.candidate_bits``) the relative
            error at each candidate width.
        """
        acc, weight = job.stats, job.weight
        yy = float(acc.yy.sum())
        # weight_only (output_method='rtn'): the MSE-RTN start, no ridge;
        # the statistics still give its output error
        rounds = 0 if job.weight_only else self.max_rounds
        ridge = damp(acc, weight, 0.0 if job.weight_only else self.damping,
                     self.damping_scales_with_rows)
        result = solve_layer(weight, acc, job.bits, max_rounds=rounds,
                             schedule=self.schedule)
        q_rtn, s_rtn = mse_rtn_float64(
            acc.weight_matrix(weight).reshape(weight.shape[0], -1)
            .to(torch.float64), job.bits)
        out = LayerResult(
            qweight=result.qweight,
            scale=result.scale,
            objective_rtn=float(result.objective_init.sum()) - ridge(
                q_rtn, s_rtn),
            objective=float(result.objective.sum()) - ridge(
                result.qweight, result.scale),
            yy=yy,
            rounds=int(result.rounds),
            rows=int(acc.n_rows),
            note=("weight-only MSE rounding (output_method='rtn')"
                  if job.weight_only else None))
        if job.candidate_bits:
            out.sensitivity = {}
            if job.keep_candidates:
                out.candidates = {}
            for bits in job.candidate_bits:
                res = result if bits == job.bits else solve_layer(
                    weight, acc, bits, max_rounds=rounds,
                    schedule=self.schedule)
                obj = float(res.objective.sum()) - ridge(res.qweight,
                                                         res.scale)
                out.sensitivity[str(bits)] = relative_error(obj, yy)
                if out.candidates is not None:
                    out.candidates[bits] = (res.qweight, res.scale)
        return out


def relative_error(objective: float, yy: float) -> float:
    """``sqrt(objective / yy)``: the output error relative to the output.

    Args:
        objective (float): Squared output error.
        yy (float): Output energy.

    Returns:
        float: The relative error (0 or inf for a zero output).
    """
    if yy <= 0:
        return 0.0 if objective <= 0 else float('inf')
    return math.sqrt(max(objective, 0.0) / yy)


def damp(acc: StatsAccumulator,
         weight: Tensor,
         damping: float,
         scales_with_rows: bool = True) -> Callable[[Tensor, Tensor], float]:
    """Add a ridge pulling the weights towards the float weights.

    ``A += lam I``, ``C += lam W^T``, ``yy += lam |w|^2`` per group, with
    ``lam = damping * max(1, N / rows) * mean(diag A)`` (without the
    ``max(1, N / rows)`` factor if ``scales_with_rows`` is False): the
    objective becomes ``|Y - X W_q^T|^2 + lam |W - W_q|^2``. Directions
    the calibration rows do not see (fewer rows than inputs, dead inputs)
    then follow the float weights instead of fitting the calibration set.

    Args:
        acc (StatsAccumulator): The layer's statistics (modified).
        weight (Tensor): The float weight.
        damping (float): Relative ridge strength; 0 disables it.
        scales_with_rows (bool): Grow the ridge with ``N / rows`` when a
            layer has fewer calibration rows than inputs.

    Returns:
        callable: ``ridge(q, scale)``, the ridge term's value summed over
        channels, to subtract from the damped objective.
    """
    G, N = acc.A.shape[:2]
    W = acc.weight_matrix(weight).to(acc.A)  # (G, Mg, N)
    scale = damping
    if scales_with_rows:
        scale *= max(1.0, N / max(int(acc.n_rows), 1))
    lam = scale * torch.diagonal(acc.A, dim1=1, dim2=2).mean(dim=1)
    if damping > 0:
        acc.A += lam[:, None, None] * torch.eye(
            acc.A.shape[1], dtype=acc.A.dtype, device=acc.A.device)
        acc.C += lam[:, None, None] * W.transpose(1, 2)
        acc.yy += lam[:, None] * (W * W).sum(dim=2)

    def ridge(q: Tensor, scale: Tensor) -> float:
        if damping <= 0:
            return 0.0
        qw = q.reshape(G, W.shape[1], -1).to(W) * scale.reshape(
            G, -1, 1).to(W)
        return float((lam[:, None] * ((W - qw)**2).sum(dim=2)).sum())

    return ridge
