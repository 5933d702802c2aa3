"""The solver's public entry points and the checks of their inputs.

:func:`bitsplit_solve` (one group of output channels) and
:func:`solve_layer` (every group of a layer) validate shapes, bit widths,
schedules and finiteness, bring the statistics to float64 on their device
and hand them to :func:`~mmquant.core.solver.rounds.solve_batched`;
:func:`objective` scores any integers and scales exactly. The algorithm is
described in :mod:`mmquant.core.solver`.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..checks import check_finite
from ..grid import check_bits, qmax, split_planes
from ..stats import StatsAccumulator
from .rounds import solve_batched

__all__ = [
    'SCHEDULES', 'SolverResult', 'bitsplit_solve', 'check_schedule',
    'objective', 'solve_layer'
]

# The round schedules (see the package docstring) and the coordinate update
# of each of their phases (see mmquant.core.solver.sweep.UPDATES): integer
# rounds from the initialisation (default); the authors' update on
# independent ternary planes; canonical-plane rounds; canonical-plane
# rounds until nothing changes, then integer rounds.
_PHASES: Dict[str, Tuple[str, ...]] = {
    'integer': ('integer', ),
    'paper': ('paper', ),
    'canonical-planes': ('canonical-planes', ),
    'canonical-planes+integer': ('canonical-planes', 'integer'),
}
SCHEDULES = tuple(_PHASES)
# Schedules of earlier versions and what replaced them (named in the
# error).
_RENAMED_SCHEDULES = {
    'planes': "renamed 'canonical-planes': it re-splits the integer "
    "canonically after every move and is not the paper's update, which is "
    "schedule='paper'",
    'planes+integer': "renamed 'canonical-planes+integer' (its plane "
    "rounds are not the paper's update, which is schedule='paper')",
}
# What the NaN/Inf error says cannot be done.
_REFUSED = 'refusing to solve (check the calibration data and the weights)'


@dataclass
class SolverResult:
    """Result of the BitSplit solver.

    Attributes:
        qweight (Tensor): ``int8`` integers, ``(M, N)`` for
            :func:`bitsplit_solve`, the layer weight's shape for
            :func:`solve_layer`.
        scale (Tensor): ``(M,)`` float32 per-channel scales, positive and
            finite.
        objective_init (Tensor): ``(M,)`` float64 objective ``||y - s X q||^2``
            of the initialisation.
        objective (Tensor): ``(M,)`` float64 objective of the result (with the
            returned float32 scales).
        rounds (int): Number of rounds run (both phases of
            ``'canonical-planes+integer'`` together).
        history (list[float]): Total objective after the initialisation and
            after each round; non-increasing.
        bits (int): The bit width.
    """
    qweight: Tensor
    scale: Tensor
    objective_init: Tensor
    objective: Tensor
    rounds: int
    history: List[float] = field(default_factory=list)
    bits: int = 0

    def planes(self) -> Tensor:
        """Canonical bit planes of :attr:`qweight`.

        Returns:
            Tensor: ``int8`` ``(bits - 1, *qweight.shape)``.
        """
        return split_planes(self.qweight, self.bits)


def objective(q: Tensor, scale: Tensor, A: Tensor, C: Tensor,
              yy: Tensor) -> Tensor:
    """Exact per-channel objective ``||y_m - s_m X q_m||^2``.

    Args:
        q (Tensor): Integers ``(M, N)`` (any dtype).
        scale (Tensor): ``(M,)`` scales.
        A (Tensor): ``(N, N)`` Gram matrix ``X^T X``.
        C (Tensor): ``(N, M)`` cross term ``X^T Y``.
        yy (Tensor): ``(M,)`` squared target norms.

    Returns:
        Tensor: ``(M,)`` float64 ``yy - 2 s C^T q + s^2 q^T A q``.
    """
    dev = A.device
    qt = q.to(device=dev, dtype=torch.float64).t()
    s = scale.to(device=dev, dtype=torch.float64)
    A64 = A.to(torch.float64)
    h = A64 @ qt
    c = (C.to(torch.float64) * qt).sum(0)
    d = (qt * h).sum(0)
    return yy.to(device=dev, dtype=torch.float64) - 2 * s * c + s * s * d


def check_schedule(schedule: str) -> str:
    """Check a round schedule.

    Args:
        schedule (str): One of :data:`SCHEDULES`.

    Returns:
        str: ``schedule``.

    Raises:
        ValueError: If it is not one of :data:`SCHEDULES` (naming the
            replacement of a schedule of an earlier version).
    """
    if isinstance(schedule, str) and schedule in _RENAMED_SCHEDULES:
        raise ValueError(f'schedule {schedule!r} was '
                         f'{_RENAMED_SCHEDULES[schedule]}')
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError('schedule must be one of '
                         f'{", ".join(map(repr, SCHEDULES))}, got '
                         f'{schedule!r}')
    return schedule


def _check_gram(A: Tensor, C: Tensor) -> None:
    """Cheap necessary conditions for ``A = X^T X``, ``C = X^T Y``.

    A non-negative diagonal; where the diagonal is zero (an input column of
    ``X`` that is always zero) the rows of ``A`` and ``C`` must be zero.
    """
    diag = torch.diagonal(A, dim1=1, dim2=2)
    if bool((diag < 0).any()):
        raise ValueError('A must be positive semi-definite (X^T X), but it '
                         'has a negative diagonal entry')
    dead = (diag == 0).nonzero()
    if dead.numel():
        if bool((A[dead[:, 0], dead[:, 1]] != 0).any()):
            raise ValueError('A must be positive semi-definite (X^T X), but '
                             'a zero diagonal entry has a non-zero row')
        if bool((C[dead[:, 0], dead[:, 1]] != 0).any()):
            raise ValueError('inconsistent statistics: an input with '
                             'A[n, n] = 0 (always zero) has a non-zero row '
                             'in C = X^T Y')


def _as64(t: Tensor, device: torch.device) -> Tensor:
    """``t`` in float64 on ``device``."""
    return t.to(device=device, dtype=torch.float64)


def bitsplit_solve(weight: Tensor,
                   A: Tensor,
                   C: Tensor,
                   bits: int,
                   yy: Optional[Tensor] = None,
                   max_rounds: int = 100,
                   schedule: str = 'integer',
                   q_init: Optional[Tensor] = None,
                   scale_init: Optional[Tensor] = None) -> SolverResult:
    """BitSplit for one group of output channels from ``(A, C, yy)``.

    Args:
        weight (Tensor): Float weights ``(M, N)`` (one row per output channel);
            used for the MSE-RTN initialisation (and for ``yy`` when absent).
        A (Tensor): ``(N, N)`` Gram matrix ``X^T X``; the computation runs on
            its device, in float64.
        C (Tensor): ``(N, M)`` cross term ``X^T Y``.
        bits (int): Bit width, ``2..8``.
        yy (Tensor, optional): ``(M,)`` squared target norms ``||y_m||^2``. If
            ``None``, ``w_m^T A w_m`` is used, which is exact when the targets
            are the float outputs ``Y = X W^T`` (it only shifts the reported
            objective, never the solution).
        max_rounds (int): Round cap of each phase (for
            ``'canonical-planes+integer'``: of the plane rounds and of the
            integer rounds); for ``'paper'`` the number of rounds (the
            authors' ``max_epoch``; rounds after all channels stopped
            changing are skipped, they would change nothing).
        schedule (str): Which coordinate updates the rounds make, one of
            :data:`SCHEDULES`: ``'integer'`` (each coordinate moves to its
            best integer; never worse than a bit-plane move, and in
            mmquant's measurements lower in objective on average and in
            fewer rounds, see ``docs/solver.md``), ``'paper'`` (the
            authors' update on independent ternary planes, see the module
            docstring), ``'canonical-planes'`` (single changes of the
            canonical bit planes; not the paper's update) or
            ``'canonical-planes+integer'`` (those rounds until nothing
            changes, then integer rounds).
        q_init (Tensor, optional): Initial integers ``(M, N)`` (instead of
            MSE-RTN).
        scale_init (Tensor, optional): Initial positive scales ``(M,)``.

    Returns:
        SolverResult: ``qweight`` ``int8 (M, N)``, ``scale`` float32
        ``(M,)`` and the objectives. Coordinates whose input is always zero
        (``A[n, n] == 0``) do not affect the objective and keep their
        initial (RTN) value.

    Raises:
        ValueError: On wrong shapes, an invalid bit width or schedule,
            out-of-range ``q_init``, non-positive ``scale_init`` or NaN/Inf
            inputs.
    """
    bits = check_bits(bits)
    check_schedule(schedule)
    if weight.dim() != 2:
        raise ValueError(f'weight must be (M, N), got {tuple(weight.shape)}')
    M, N = weight.shape
    if tuple(A.shape) != (N, N):
        raise ValueError(f'A must be ({N}, {N}), got {tuple(A.shape)}')
    if tuple(C.shape) != (N, M):
        raise ValueError(f'C must be ({N}, {M}), got {tuple(C.shape)}')
    dev = A.device
    W = _as64(weight, dev)
    A64, C64 = _as64(A, dev), _as64(C, dev)
    for t, name in ((W, 'weight'), (A64, 'A (input statistics X^T X)'),
                    (C64, 'C (statistics X^T Y)')):
        check_finite(t, name, _REFUSED, via_sum=True)
    if yy is None:
        yy64 = ((A64 @ W.t()) * W.t()).sum(0)
    else:
        if tuple(yy.shape) != (M, ):
            raise ValueError(f'yy must be ({M},), got {tuple(yy.shape)}')
        yy64 = _as64(yy, dev)
        check_finite(yy64, 'yy (statistics sum y^2)', _REFUSED,
                     via_sum=True)
    qi, si = _check_init(q_init, scale_init, M, N, bits, dev)
    cap = int(max_rounds)
    _check_gram(A64[None], C64[None])
    q, s, oi, o, rounds, hist = solve_batched(
        W[None], A64[None], C64[None], yy64[None], bits, cap,
        _PHASES[schedule], None if qi is None else qi[None],
        None if si is None else si[None])
    return SolverResult(
        qweight=q[0].round().to(torch.int8).contiguous(),
        scale=s[0],
        objective_init=oi[0],
        objective=o[0],
        rounds=rounds,
        history=hist,
        bits=bits)


def _check_init(q_init: Optional[Tensor], scale_init: Optional[Tensor],
                M: int, N: int, bits: int,
                dev: torch.device) -> Tuple[Optional[Tensor], ...]:
    """Check the optional initial integers and scales; float64 on
    ``dev``."""
    qi = si = None
    if q_init is not None:
        if q_init.numel() != M * N:
            raise ValueError(f'q_init must have {M * N} elements '
                             f'({M} channels), got {tuple(q_init.shape)}')
        qi = _as64(q_init.reshape(M, N), dev)
        check_finite(qi, 'q_init', _REFUSED, via_sum=True)
        top = qmax(bits)
        if not torch.equal(qi, qi.round()) or bool((qi.abs() > top).any()):
            raise ValueError(f'q_init must hold integers in [-{top}, {top}]')
    if scale_init is not None:
        si = _as64(scale_init.reshape(-1), dev)
        if si.numel() != M:
            raise ValueError(f'scale_init must have {M} elements, '
                             f'got {tuple(scale_init.shape)}')
        check_finite(si, 'scale_init', _REFUSED, via_sum=True)
        if bool((si <= 0).any()):
            raise ValueError('scale_init must be positive')
    return qi, si


def solve_layer(weight: Tensor,
                acc: StatsAccumulator,
                bits: int,
                max_rounds: int = 100,
                schedule: str = 'integer') -> SolverResult:
    """Solve every group of a conv/linear layer from its statistics.

    All groups (e.g. the channels of a depthwise conv) are solved together
    as one batched problem.

    Args:
        weight (Tensor): The layer weight, ``(M, Cin/G, kh, kw)`` or
            ``(M, N)``.
        acc (StatsAccumulator): The layer's statistics.
        bits (int): Bit width, ``2..8``.
        max_rounds (int): Round cap of each phase.
        schedule (str): See :func:`bitsplit_solve`.

    Returns:
        SolverResult: ``qweight`` ``int8`` with ``weight.shape``, ``scale``
        ``(M,)`` float32; objectives per output channel.

    Raises:
        ValueError: If no statistics were accumulated, on shape mismatch,
            an invalid bit width or schedule, or NaN/Inf.
    """
    bits = check_bits(bits)
    check_schedule(schedule)
    if acc.n_rows == 0:
        raise ValueError('no statistics accumulated for this layer '
                         '(call StatsAccumulator.update first)')
    dev = acc.A.device
    W = _as64(acc.weight_matrix(weight), dev)
    A64, C64, yy64 = (_as64(acc.A, dev), _as64(acc.C, dev),
                      _as64(acc.yy, dev))
    for t, name in ((W, 'weight'), (A64, 'A (input statistics X^T X)'),
                    (C64, 'C (statistics X^T Y)')):
        check_finite(t, name, _REFUSED, via_sum=True)
    check_finite(yy64, 'yy (statistics sum y^2)', _REFUSED, via_sum=True)
    cap = int(max_rounds)
    _check_gram(A64, C64)
    q, s, oi, o, rounds, hist = solve_batched(W, A64, C64, yy64, bits, cap,
                                              _PHASES[schedule], None, None)
    M = weight.shape[0]
    return SolverResult(
        qweight=q.reshape(M, -1).round().to(torch.int8).reshape(
            weight.shape),
        scale=s.reshape(M),
        objective_init=oi.reshape(M),
        objective=o.reshape(M),
        rounds=rounds,
        history=hist,
        bits=bits)
