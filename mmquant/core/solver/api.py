"""BitSplit output-reconstruction solver on sufficient statistics.

For one output channel ``m`` with calibration inputs ``X`` (``K x N``) and
targets ``y`` (``K``), BitSplit minimises over a positive scale ``s`` and an
integer vector ``q`` on the ``k``-bit grid (written as ternary bit planes,
see :mod:`mmquant.core.grid`)::

    f(s, q) = ||y - s X q||^2 = yy - 2 s c^T q + s^2 q^T A q

with ``A = X^T X``, ``c = X^T y`` (a column of ``C = X^T Y``) and
``yy = ||y||^2``. The data enters only through ``(A, C, yy)``; ``X`` is never
needed again. The solver keeps ``h = A q`` (as ``h / diag(A)``), ``C^T q``
and ``q^T A q`` up to date incrementally, so that the objective and every
coordinate update are exact and cheap.

Algorithm (all channels and, in :func:`solve_layer`, all groups at once):

1. Initialise with MSE round-to-nearest (:mod:`mmquant.core.rtn`).
2. Repeat rounds of

   * the closed-form scale ``s = c^T q / q^T h`` (a negative optimum is
     absorbed by negating ``q``, which the symmetric grid allows; a
     degenerate ``q^T h <= 0`` keeps the previous scale), then
   * one ascending Gauss-Seidel pass over the coordinates ``n``. With
     ``a = A[n, n]`` the objective restricted to ``q[n]`` is
     ``a s^2 (q[n] - t)^2 + const`` with
     ``t = q[n] + (c[n] / s - h[n]) / a``, and ``q[n]`` moves to

     - the best integer ``clip(round(t), -qmax, qmax)`` (*integer* rounds,
       mmquant's default; the pass visits every coordinate), or
     - the best value reachable from ``q[n]`` by changing single bit
       planes of its canonical sign-magnitude split, re-split after every
       change (*canonical-plane* rounds, looked up in a small precomputed
       table; the pass visits the coordinates that can improve at the
       start of the round; not the paper's update). Every single
       bit-plane change is an integer change, so an integer move is never
       worse than the plane move.

   until no channel improves (or ``max_rounds``).

The ``schedule`` picks the rounds (see :data:`SCHEDULES`): ``'integer'``
(default), ``'canonical-planes'``, ``'canonical-planes+integer'``
(canonical-plane rounds until nothing changes, then integer rounds), or
``'paper'``: the authors' update (``ofwa_rr`` of their code). It keeps the
``k - 1`` ternary planes as independent arrays (initialised by the
canonical split; splits such as ``1 = 2 - 1`` arise and stay) and runs
``max_rounds`` rounds of: the closed-form scale, then for each plane from
the most significant a Gauss-Seidel pass over all inputs in order, each
bit set to its best value in ``{-1, 0, +1}`` given everything else (an
exact tie takes the non-zero value, as their code does). Its result
equals the authors' from the same start except in degenerate cases: an
input that is always zero keeps its initial integer (their code zeroes
its bits; the objective is the same), a negative optimal scale is
absorbed by negating the planes, and ``q^T A q = 0`` keeps the previous
scale. A result of integer rounds is optimal with respect to every
single-plane change, every single-integer change and the scale.

Every step is an exact minimisation, so the objective never increases.
See ``docs/solver.md`` for the complexity and the degenerate-case policy.
"""
import contextlib
import functools
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..grid import check_bits, qmax, split_planes
from ..rtn import mse_rtn_float64

__all__ = [
    'SCHEDULES', 'SolverResult', 'bitsplit_solve', 'check_schedule',
    'objective', 'solve_layer'
]

# The round schedules (see the module docstring): integer rounds from the
# initialisation (default); the authors' update on independent ternary
# planes; canonical-plane rounds; canonical-plane rounds until nothing
# changes, then integer rounds.
SCHEDULES = ('integer', 'paper', 'canonical-planes',
             'canonical-planes+integer')
# Schedules of earlier versions and what replaced them (named in the
# error).
_RENAMED_SCHEDULES = {
    'planes': "renamed 'canonical-planes': it re-splits the integer "
    "canonically after every move and is not the paper's update, which is "
    "schedule='paper'",
    'planes+integer': "renamed 'canonical-planes+integer' (its plane "
    "rounds are not the paper's update, which is schedule='paper')",
}

# A coordinate is a candidate of a round only if its best move lowers
# (q[n] - t)^2 by more than _TOL (in units of a * s^2); convergence is
# declared when no coordinate is a candidate. Protects against endless
# flip-flopping on rounding noise when t sits on a tie.
_TOL = 1e-9
# A channel stays in the rounds that visit every coordinate while a round
# lowers its objective by more than _TOL_ROUND * ||y||^2.
_TOL_ROUND = 1e-13
# Coordinates per lazy-update block (u = A q / diag(A) is refreshed by one
# GEMM per block; at most 255, see _visit_block). With several intra-op
# threads, smaller when there are many channels, so that a block tile stays
# below torch's 32768-element threshold for multi-threaded kernels (the
# per-iteration updates are too small to gain from threads).
_BLOCK = 128
_TILE = 32767
# Largest non-zero fraction of a block's moves that uses a sparse GEMM.
_SPARSE = 0.1
# Inside a block, the channels that stopped moving are dropped from the tile
# once the moving ones are at most this fraction of it.
_COMPACT = 0.75
# A round sweeps (and the next round checks) only the channels with a
# candidate once they are at most this fraction of the current ones
# (gathering them costs about as much as a few passes over all).
_SHRINK = 0.8
# Intra-op threads used by the solver's rounds (None: leave torch's setting).
# The rounds are thousands of small tensor operations; waking a thread pool
# for each costs more than it gains, and on a machine shared with other
# jobs it can cost milliseconds per operation.
SOLVER_THREADS: Optional[int] = 1
# Run the block sweep (thousands of small tensor operations per round)
# through TorchScript, whose interpreter calls them with less overhead than
# Python; False runs the same function in Python (for debugging).
USE_TORCHSCRIPT = True


@contextlib.contextmanager
def _solver_threads():
    """Run the block in :data:`SOLVER_THREADS` intra-op threads."""
    before = torch.get_num_threads()
    want = SOLVER_THREADS
    if want is None or want >= before:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class SolverResult:
    """Result of the BitSplit solver.

    Attributes:
        qweight: ``int8`` integers, ``(M, N)`` for :func:`bitsplit_solve`,
            the layer weight's shape for :func:`solve_layer`.
        scale: ``(M,)`` float32 per-channel scales, positive and finite.
        objective_init: ``(M,)`` float64 objective ``||y - s X q||^2`` of
            the initialisation.
        objective: ``(M,)`` float64 objective of the result (with the
            returned float32 scales).
        rounds: Number of rounds run (both phases of
            ``'canonical-planes+integer'`` together).
        history: Total objective after the initialisation and after each
            round; non-increasing.
        bits: The bit width.
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
        q: Integers ``(M, N)`` (any dtype).
        scale: ``(M,)`` scales.
        A: ``(N, N)`` Gram matrix ``X^T X``.
        C: ``(N, M)`` cross term ``X^T Y``.
        yy: ``(M,)`` squared target norms.

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


@functools.lru_cache(maxsize=None)
def _plane_table(bits: int) -> Tensor:
    """Best step reachable by single bit-plane changes, as a lookup table.

    Entry ``[q + qmax, u]`` is ``q' - q``, where ``q'`` is the fixed point
    of repeated single-plane improvements (planes most significant first,
    canonical split after each change) starting from ``q`` with target
    ``t`` in the half-open bucket
    ``u``: ``t in [(u - off) / 2, (u - off + 1) / 2)``,
    ``off = 2 (qmax + 1)``. Inside a bucket no two grid values are
    equidistant from ``t``, so the table is exact for every ``t``.

    Args:
        bits: The bit width.

    Returns:
        Tensor: CPU float64, flattened ``(2 qmax + 1) * (4 qmax + 5)``.
    """
    top = qmax(bits)
    nb, off = 4 * top + 5, 2 * (top + 1)
    rep = (torch.arange(nb, dtype=torch.float32) - off + 0.5) / 2
    cur = torch.arange(-top, top + 1, dtype=torch.int32)[:, None].repeat(
        1, nb)
    rep = rep.expand_as(cur)
    while True:
        before = cur
        for shift in range(bits - 2, -1, -1):
            wj = 1 << shift
            # canonical bit of this plane: sign(q) * ((|q| >> shift) & 1)
            bj = torch.sign(cur) * ((cur.abs() >> shift) & 1)
            rest = cur - wj * bj
            # best of rest + wj * {-1, 0, 1}; no ties at the bucket centres
            b = torch.round((rep - rest) / wj).clamp_(-1, 1)
            cur = rest + wj * b.to(torch.int32)
        if torch.equal(cur, before):
            break
    step = cur - torch.arange(-top, top + 1, dtype=torch.int32)[:, None]
    return step.to(torch.float64).reshape(-1)


def check_schedule(schedule: str) -> str:
    """Check a round schedule.

    Args:
        schedule: One of :data:`SCHEDULES`.

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


def _check_finite(t: Tensor, name: str) -> None:
    # A NaN or Inf anywhere makes the sum non-finite (so does an overflow,
    # which would be just as unusable); one reduction instead of a mask.
    if not bool(torch.isfinite(t.sum())):
        raise ValueError(f'{name} contains NaN or Inf; refusing to solve '
                         '(check the calibration data and the weights)')


class _Workspace:
    """Reusable flat buffers for the large temporaries of the rounds.

    Allocating a fresh multi-megabyte tensor for every intermediate of
    every round costs more than the arithmetic: the allocator hands such
    blocks back to the operating system, and each new one is faulted in
    again page by page.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._bufs: Dict[str, Tensor] = {}

    def get(self, name: str, shape: Sequence[int],
            dtype: torch.dtype) -> Tensor:
        """A contiguous ``shape`` view of buffer ``name`` (grown on
        demand; the contents are undefined)."""
        n = 1
        for k in shape:
            n *= k
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = torch.empty(max(n, 1), dtype=dtype,
                              device=self.device)
            self._bufs[name] = buf
        return buf[:n].view(shape)


class _BatchedSolver:
    """State of one batched solve over ``G`` independent problems.

    Layout is channel-major (selecting channels gathers rows). Per channel
    the state is the integers ``q`` and ``u = (q A) / diag(A)``
    (``(G, Mg, N)``), the scale ``s``, ``c = C^T q``, ``d = q^T A q`` and
    the objective (``(G, Mg)``). The coordinate targets are
    ``t = q + C^T / (s diag(A)) - u``. ``A`` is ``(G, N, N)``, symmetric
    positive semi-definite, with zero rows (and zero rows of ``C``) at
    dead coordinates.

    Rounds only touch the *active* channels: a channel whose integers did
    not change in a round keeps its (optimal) scale and its
    coordinate-optimal integers, so it cannot become improvable again.
    The rounds of a phase work on a compact copy of the active channels'
    state (the working set, see :meth:`round_planes`), which shrinks with
    them; a channel's integers are copied back once, when it leaves.
    """

    def __init__(self, A: Tensor, Ct: Tensor, yy: Tensor, q: Tensor,
                 s: Tensor, bits: int, h: Tensor) -> None:
        self.A, self.Ct, self.yy, self.q, self.s = A, Ct, yy, q, s
        self.top = qmax(bits)
        self.diag = torch.diagonal(A, dim1=1, dim2=2)[:, None, :]
        alive = self.diag > 0
        self.inv_a = torch.where(alive, 1.0 / torch.where(
            alive, self.diag, 1.0), 0.0)  # (G, 1, N)
        self.cta = Ct * self.inv_a  # C^T / diag(A)
        self.u = h.mul_(self.inv_a)  # h = q A
        self.table = _plane_table(bits).to(A.device)
        self.nb, self.off = 4 * self.top + 5, 2 * (self.top + 1)
        self.nbt = A.new_tensor(float(self.nb))
        self.key0 = A.new_tensor(float(self.top * self.nb + self.off))
        self.c, self.d = self._terms(q, self.u, Ct)
        self.obj = yy - 2 * s * self.c + s * s * self.d
        self.history: List[float] = [float(self.obj.sum())]
        self.rounds = 0
        self._bfull: Optional[Tensor] = None
        self.ws = _Workspace(A.device)
        # the channels the rounds work on (None: all) and their state
        # (q, u, cta, Ct, s, yy, c, d), see round_planes
        self.wch: Optional[Tensor] = None
        self.work: Tuple[Tensor, ...] = ()
        self._parity = 0

    @property
    def bfull(self) -> Tensor:
        """``A[i, j] / A[j, j]`` (zero for dead ``j``): how much ``u_j``
        (and minus target ``t_j``) grows when ``q_i`` grows by one. Built
        on first use."""
        if self._bfull is None:
            self._bfull = self.A * self.inv_a
        return self._bfull

    def _terms(self, q: Tensor, u: Tensor,
               Ct: Tensor) -> Tuple[Tensor, Tensor]:
        """``c = C^T q`` and ``d = q^T A q = sum q diag(A) u``."""
        return (Ct * q).sum(2), (q * u).mul_(self.diag).sum(2)

    def candidates(self, q: Tensor, u: Tensor, cta: Tensor,
                   inv_s: Tensor) -> Tensor:
        """Where the best canonical-plane value ``new`` for the targets
        ``t = q - u + cta inv_s`` lowers ``(q - t)^2`` by more than
        ``_TOL``, as ``(q - new) (q + new - 2 t) > _TOL``.

        A dead coordinate (``A[n, n] = 0``) has ``u = cta = 0``, hence
        ``t = q`` and a zero step: never a candidate.

        Returns:
            Tensor: bool, the shape of ``q``; a workspace buffer, valid
            until the next call.
        """
        top, ws, shape = self.top, self.ws, q.shape
        t = torch.sub(q, u, out=ws.get('t', shape, q.dtype))
        t.addcmul_(cta, inv_s)
        w, v = ws.get('w', shape, q.dtype), ws.get('v', shape, q.dtype)
        # nb q + (nb qmax + off) in one pass (exact: small integers)
        key = torch.addcmul(self.key0, q, self.nbt, out=w)
        key.add_(torch.clamp(t, -top - 1.0, top + 1.0, out=v), alpha=2)
        # key >= 0, so truncation is floor
        # (int32 keys: converting to and indexing with them is about
        # twice as fast as with int64)
        kl = ws.get('k', shape, torch.int32).copy_(key)
        step = torch.index_select(self.table, 0, kl.view(-1),
                                  out=v.view(-1)).view(shape)
        w = torch.add(step, q, alpha=2, out=w).sub_(t, alpha=2)
        # step = new - q: the gain is -step (q + new - 2 t) > _TOL
        mask = torch.lt(w.mul_(step), -_TOL,
                        out=ws.get('m', shape, torch.bool))
        return mask

    def _scale_step(self, q: Tensor, u: Tensor, s: Tensor, c: Tensor,
                    d: Tensor,
                    planes: Optional[Tensor] = None) -> Tuple[Tensor, ...]:
        """Closed-form scale ``|c| / d``; a negative optimum is absorbed
        by negating ``q`` (and ``u``, ``planes``) in place.

        Returns:
            tuple: The new ``s`` and ``c``.
        """
        ok = (d > 0) & (c != 0)
        new = c.abs() / torch.where(ok, d, 1.0)
        ok &= torch.isfinite(new) & (new > 0)
        flip = ok & (c < 0)
        if bool(flip.any()):
            sign = torch.where(flip, -1.0, 1.0)
            q.mul_(sign[:, :, None])
            u.mul_(sign[:, :, None])
            if planes is not None:
                planes.mul_(sign[None, :, :, None])
            c = c * sign
        return torch.where(ok, new, s), c

    def round_all(self) -> bool:
        """One integer round visiting every coordinate, on the working set.

        The scale, then one Gauss-Seidel pass over all coordinates. A
        channel whose objective the pass lowered by at most
        :data:`_TOL_ROUND` times ``||y||^2`` (no move, or only moves
        between equally good integers) leaves the working set: with the
        same integers it would get the same scale and make the same moves
        again.

        Returns:
            bool: Whether some channel still improves.
        """
        q, u, cta, Ct, s, yy, c, d = self.work
        wch = self.wch
        s, c = self._scale_step(q, u, s, c, d)
        obj0 = yy - 2 * s * c + s * s * d
        inv_s = (1.0 / s)[:, :, None]
        self._sweep(q, u, cta, inv_s, Ct, c, d, list(range(q.shape[2])), 0)
        obj = yy - 2 * s * c + s * s * d
        self._publish(wch, s, obj, c, d)
        moved_ch = ((obj0 - obj) > _TOL_ROUND * yy.abs()).view(
            torch.uint8).amax(0).bool()
        n_moved = int(moved_ch.sum())
        if 0 < n_moved <= _SHRINK * moved_ch.numel():
            # the channels that stopped improving leave (with all channels
            # in the working set, q and u are the full arrays themselves)
            self._store_leaving(wch, moved_ch, q, u)
            keep = moved_ch.nonzero().flatten()
            q, u, cta, Ct, s, yy, c, d = _select(
                (q, u, cta, Ct, s, yy, c, d), keep, self.ws,
                f'work{self._parity}')
            self._parity ^= 1
            wch = keep if wch is None else wch.index_select(0, keep)
        self.work, self.wch = (q, u, cta, Ct, s, yy, c, d), wch
        return n_moved > 0

    def _store_leaving(self, wch: Optional[Tensor], stay: Tensor,
                       q: Tensor, u: Tensor) -> None:
        """Store the integers and ``u`` of the working-set channels that
        leave it (``~stay``) back into the full arrays.

        Args:
            wch (Tensor, optional): The working set's channel indices;
                ``None`` while it is all channels (then ``q`` and ``u``
                are the full arrays themselves).
            stay (Tensor): Bool per working-set channel.
            q (Tensor): The working set's integers.
            u (Tensor): The working set's ``u``.
        """
        if wch is None:
            return
        out = (~stay).nonzero().flatten()
        rows = wch.index_select(0, out)
        self.q.index_copy_(1, rows, q.index_select(1, out))
        self.u.index_copy_(1, rows, u.index_select(1, out))

    def round_planes(self) -> bool:
        """One canonical-plane round (scale, then one sweep over the
        candidates) on the working set.

        The working set starts as all channels. Once at most
        :data:`_SHRINK` of its channels have a candidate, the others leave
        it (their state is stored back into the full arrays) and the next
        rounds work on compact copies of the rest, stored back when they
        leave or at the end of the phase.

        Returns:
            bool: Whether anything moved.
        """
        q, u, cta, Ct, s, yy, c, d = self.work
        wch = self.wch
        s, c = self._scale_step(q, u, s, c, d)
        obj = yy - 2 * s * c + s * s * d
        # Candidates: coordinates where some channel improves (q - t)^2
        # by more than _TOL.
        inv_s = (1.0 / s)[:, :, None]
        mask = self.candidates(q, u, cta, inv_s)
        # (amax over a bool's bytes is any, and fast over the outer dims)
        mask = mask.view(torch.uint8)
        coords = mask.amax(dim=1).amax(dim=0).nonzero().flatten().tolist()
        moved_ch = mask.amax(dim=2).amax(dim=0).bool()
        del mask
        if coords and int(moved_ch.sum()) <= _SHRINK * moved_ch.numel():
            # the channels without a candidate would not move: they leave
            self._publish(wch, s, obj, c, d)
            self._store_leaving(wch, moved_ch, q, u)
            keep = moved_ch.nonzero().flatten()
            q, u, cta, Ct, s, yy, inv_s, c, d = _select(
                (q, u, cta, Ct, s, yy, inv_s, c, d), keep, self.ws,
                f'work{self._parity}')
            self._parity ^= 1
            wch = keep if wch is None else wch.index_select(0, keep)
        if coords:
            self._sweep(q, u, cta, inv_s, Ct, c, d, coords, 1)
            obj = yy - 2 * s * c + s * s * d
        self.work, self.wch = (q, u, cta, Ct, s, yy, c, d), wch
        self._publish(wch, s, obj, c, d)
        return bool(coords)

    def _publish(self, wch: Optional[Tensor], s: Tensor, obj: Tensor,
                 c: Tensor, d: Tensor) -> None:
        """Store the per-channel scalars of the working set ``wch``."""
        if wch is None:
            self.s, self.obj, self.c, self.d = s, obj, c, d
            return
        for name, val in (('s', s), ('obj', obj), ('c', c), ('d', d)):
            getattr(self, name).index_copy_(1, wch, val)

    def _sweep(self, Q: Tensor, U: Tensor, cta: Tensor, inv_s: Tensor,
               Ct: Tensor, c: Tensor, d: Tensor, coords: List[int],
               mode: int, plane: Optional[Tensor] = None,
               pj: float = 1.0) -> None:
        """One Gauss-Seidel pass over ``coords`` (see
        :func:`_sweep_blocks`), in place."""
        if plane is None:
            plane = Q.new_empty(0)
        step = _block_size(Q.shape[0] * Q.shape[1])
        sparse_ok = Q.shape[0] == 1 and Q.device.type == 'cpu'
        sweep = _kernel()
        # (the plain interpreter: the profiling executor re-specialises
        # for the shrinking tiles and gains nothing from them)
        with warnings.catch_warnings(), torch.jit.optimized_execution(False):
            warnings.simplefilter('ignore')  # "CSR support is in beta"
            sweep(Q, U, cta, inv_s, Ct, c, d, coords, step, mode,
                  self.bfull, self.diag, self.table, self.top, self.nb,
                  self.off, _positions(step, Q.device), sparse_ok, _SPARSE,
                  _COMPACT, plane, float(pj))

    def run_paper(self, bits: int, max_rounds: int) -> None:
        """The authors' rounds on independent ternary planes.

        The planes start as the canonical split of ``q``. Each of the
        ``max_rounds`` rounds takes the closed-form scale, then sweeps
        plane ``j = 0 .. k-2`` (most significant first), each over all
        coordinates in ascending order, setting every ``b_j[n]`` to its
        best value in ``{-1, 0, 1}`` given everything else. A channel whose
        planes did not change in a round is at a fixed point of the rounds
        (same planes, hence the same scale and the same decisions) and
        leaves the working set: the result equals ``max_rounds`` rounds.
        The scale is the one of the last round's start, as in the authors'
        code (not refitted to the last round's planes).

        Args:
            bits: The bit width.
            max_rounds: Number of rounds.
        """
        G, Mg, N = self.q.shape
        self.planes = split_planes(self.q.to(torch.int32), bits).to(
            self.q.dtype)  # (k - 1, G, Mg, N)
        weights = [float(1 << (bits - 2 - j)) for j in range(bits - 1)]
        coords = list(range(N))
        wch: Optional[Tensor] = None  # the working set's channels
        q, u, cta, Ct, s, yy, c, d = (self.q, self.u, self.cta, self.Ct,
                                      self.s, self.yy, self.c, self.d)
        pl = self.planes
        for _ in range(max_rounds):
            # closed-form scale; a negative optimum negates the planes
            s, c = self._scale_step(q, u, s, c, d, pl)
            inv_s = (1.0 / s)[:, :, None]
            before = pl.clone()
            for j, pj in enumerate(weights):
                self._sweep(q, u, cta, inv_s, Ct, c, d, coords, 2, pl[j],
                            pj)
            obj = yy - 2 * s * c + s * s * d
            self._publish(wch, s, obj, c, d)
            self.rounds += 1
            self.history.append(float(self.obj.sum()))
            moved = (pl != before).view(torch.uint8).amax(3).amax(
                0).amax(0).bool()  # (m,)
            n_moved = int(moved.sum())
            if n_moved == 0:
                break
            if n_moved <= _SHRINK * moved.numel():
                # the channels at a fixed point leave the working set
                out = (~moved).nonzero().flatten()
                rows = out if wch is None else wch.index_select(0, out)
                self.q.index_copy_(1, rows, q.index_select(1, out))
                self.u.index_copy_(1, rows, u.index_select(1, out))
                self.planes.index_copy_(2, rows, pl.index_select(2, out))
                keep = moved.nonzero().flatten()
                q, u, cta, Ct, s, yy, c, d = _select(
                    (q, u, cta, Ct, s, yy, c, d), keep)
                pl = pl.index_select(2, keep)
                wch = keep if wch is None else wch.index_select(0, keep)
        if wch is not None:
            self.q.index_copy_(1, wch, q)
            self.u.index_copy_(1, wch, u)
            self.planes.index_copy_(2, wch, pl)
        self.c, self.d = self._terms(self.q, self.u, self.Ct)
        s = self.s
        self.obj = self.yy - 2 * s * self.c + s * s * self.d

    def run_phase(self, integer: bool, max_rounds: int) -> None:
        """Rounds until nothing moves or ``max_rounds``."""
        self.wch = None
        self.work = (self.q, self.u, self.cta, self.Ct, self.s, self.yy,
                     self.c, self.d)
        for _ in range(max_rounds):
            moved = self.round_all() if integer else self.round_planes()
            self.rounds += 1
            self.history.append(float(self.obj.sum()))
            if not moved:
                break
        if self.wch is not None:  # the working set's integers back
            self.q.index_copy_(1, self.wch, self.work[0])
            self.u.index_copy_(1, self.wch, self.work[1])
        self.work = ()
        # drop the rounding drift of the incremental c and d
        self.c, self.d = self._terms(self.q, self.u, self.Ct)
        s = self.s
        self.obj = self.yy - 2 * s * self.c + s * s * self.d


def _visit_block(tb: Tensor, zb: Tensor, bu: Tensor, mode: int,
                 table: Tensor, top: int, nb: int, pos: Tensor,
                 compact: float, pj: float) -> bool:
    """Gauss-Seidel over the ``B`` coordinates of one block (hot loop).

    Channels are independent, so instead of visiting the coordinates one
    by one for all channels, every iteration finds, for each channel, the
    first coordinate at which it moves (a position-weighted maximum over
    the block) and makes that move: the result is exactly the ascending
    pass, in as many iterations as the largest number of moves of one
    channel in the block.
    Only targets *after* the moved coordinate are updated (``bu`` is the
    strictly upper triangle), and the moved coordinate's step becomes zero
    (the integer step is the rounded target; the plane table maps its own
    end point to a zero step; the paper's ternary choice depends on the
    target alone), so passed coordinates never move again:
    the tiles are narrowed to the columns after the earliest move, and
    channels that stop moving are dropped from them once they are at least
    ``1 - compact`` of them.

    Args:
        tb: ``(G, m, B)`` targets, overwritten; in mode 2 the targets of
            the plane, ``t - (q - pj b)``.
        zb: ``(G, m, B)`` the state, updated in place: the integers
            ``q`` (mode 0), the plane-table keys ``nb q + nb qmax + off``
            (mode 1) or the plane's values ``b`` (mode 2).
        bu: ``(G, B, B)`` strictly upper triangle of the target drops.
        mode: 0: integer steps; 1: canonical bit-plane steps from
            ``table``; 2: the paper's step of one independent plane of
            weight ``pj``, ``b = sign(e)`` if ``|e| >= pj / 2``, else 0.
        table: The plane table.
        top: ``qmax``.
        nb: Table row length (a unit move of ``q`` moves the key by it).
        pos: ``uint8`` position weights ``B, B - 1, ..., 1``.
        compact: :data:`_COMPACT`.
        pj: The plane's weight (mode 2).

    Returns:
        bool: Whether anything moved.
    """
    lo, hi = -top - 1.0, top + 1.0
    G, B = tb.shape[0], tb.shape[2]
    bu0 = bu[0]
    sel: Optional[Tensor] = None  # channels of the tiles (None: all)
    z = zb
    c = 0  # columns before c are settled for every channel
    moved = False
    # each iteration moves every moving channel strictly forward: at most
    # B moving iterations and one that finds nothing
    for _ in range(B + 1):
        tv, zv = tb[:, :, c:], z[:, :, c:]
        if mode == 1:
            # the key is >= 0, so the int32 truncation is a floor (int32:
            # twice as fast to make and to index with as int64)
            key = torch.add(zv, tv.clamp(lo, hi), alpha=2).to(torch.int32)
            step = table.index_select(0, key.view(-1)).view(key.shape)
        elif mode == 2:
            # the authors' rule: -sign(r), zero only if strictly below the
            # threshold (an exact tie |e| = pj / 2 takes the sign)
            step = torch.where(tv.abs() >= 0.5 * pj, torch.sign(tv),
                               torch.zeros_like(tv)).sub_(zv)
        else:
            step = tv.round().clamp_(-top, top).sub_(zv)
        # first moving coordinate per channel: position j weighs B - j, so
        # the largest weight of the moving positions is the first of them
        # (a max with indices is several times slower than amax; bool
        # times uint8 is uint8)
        val = step.to(torch.bool).mul(pos[c:]).amax(2, keepdim=True)
        # channels moving in some group
        if G == 1:
            act = val.view(-1)
        else:
            act = val.view(G, -1).amax(0)
        n_act = int(act.count_nonzero())
        if n_act == 0:
            break
        moved = True
        # (a channel that does not move gets position B - 1, zero step)
        first = (B - val.to(torch.long)).clamp_(max=B - 1)
        d = step.gather(2, first - c)  # (G, m, 1)
        if mode == 1:
            z.scatter_add_(2, first, d * nb)
        else:
            z.scatter_add_(2, first, d)
        if mode == 2:  # a unit step of the plane moves q by pj
            d = d * pj
        if G == 1:
            rows = bu0.index_select(0, first.view(-1))[:, c:]
        else:
            rows = bu.gather(1, first.expand(-1, -1, B))[:, :, c:]
        tv.addcmul_(rows, d, value=-1)
        c = int(first.min()) + 1
        if c >= B:
            break
        if n_act <= compact * act.numel():
            keep = act.nonzero().flatten()
            if sel is None:
                sel = keep
            else:
                zb.index_copy_(1, sel, z)
                sel = sel.index_select(0, keep)
            z, tb = z.index_select(1, keep), tb.index_select(1, keep)
    if sel is not None:
        zb.index_copy_(1, sel, z)
    return moved


def _sweep_blocks(Q: Tensor, U: Tensor, cta: Tensor, inv_s: Tensor,
                  Ct: Tensor, c: Tensor, d: Tensor, coords: List[int],
                  step: int, mode: int, bfull: Tensor, diag: Tensor,
                  table: Tensor, top: int, nb: int, off: int, pos: Tensor,
                  sparse_ok: bool, sparse: float, compact: float,
                  plane: Tensor, pj: float) -> None:
    """One Gauss-Seidel pass over ``coords`` (ascending), in place.

    The coordinates are taken in blocks of ``step``. Per block, the
    targets of the block's coordinates are formed once (a ``m x B`` tile)
    and :func:`_visit_block` runs the pass over them, updating only the
    tile; then ``u`` of all coordinates is brought up to date by one
    product with the block's rows of ``bfull``, and ``q``, ``c`` and ``d``
    follow: ``c += C_b^T delta``, ``d += delta^T A_b (2 q + delta)``
    restricted to the block ``b`` (``A q`` on the block is
    ``diag(A) u``). Moves are sparse after the first rounds;
    :func:`_apply_sparse` then does all of this from the non-zeros alone.

    Written for TorchScript (see :func:`_kernel`): the block loop runs
    thousands of small tensor operations, and the interpreter calls them
    with less overhead than Python does.

    Args:
        Q: ``(G, m, N)`` integers (float64), updated in place.
        U: ``(G, m, N)`` ``(q A) / diag(A)``, updated in place.
        cta: ``(G, m, N)`` ``C^T / diag(A)``.
        inv_s: ``(G, m, 1)`` inverse scales.
        Ct: ``(G, m, N)`` ``C^T``.
        c: ``(G, m)`` ``C^T q``, updated in place.
        d: ``(G, m)`` ``q^T A q``, updated in place.
        coords: Ascending coordinates to visit.
        step: Coordinates per block (at most 255).
        mode: 0: integer steps; 1: canonical bit-plane steps from
            ``table``; 2: the paper's steps of the independent plane
            ``plane`` (see :func:`_visit_block`).
        bfull: ``(G, N, N)`` ``A[i, j] / A[j, j]``.
        diag: ``(G, 1, N)`` ``diag(A)``.
        table: The plane table (:func:`_plane_table`).
        top: ``qmax``.
        nb: Plane-table row length.
        off: Plane-table bucket offset.
        pos: ``uint8`` position weights ``step, ..., 1``.
        sparse_ok: Whether :func:`_apply_sparse` may be used (one group
            on the CPU).
        sparse: :data:`_SPARSE`.
        compact: :data:`_COMPACT`.
        plane: Mode 2: ``(G, m, N)`` the plane's values in
            ``{-1, 0, 1}`` (float64), updated in place; else unused.
        pj: Mode 2: the plane's weight ``2^(k-2-j)``.
    """
    G, m, N = Q.shape[0], Q.shape[1], Q.shape[2]
    for start in range(0, len(coords), step):
        blk = coords[start:start + step]
        c0, c1 = blk[0], blk[-1] + 1
        B = len(blk)
        idx: Optional[Tensor] = None
        gidx = Q.new_empty(0, dtype=torch.long)
        ix = gidx
        if c1 - c0 == B:  # contiguous: views, no gathers
            q0, u0 = Q[:, :, c0:c1], U[:, :, c0:c1]
            cb = cta[:, :, c0:c1]
            b0 = plane[:, :, c0:c1] if mode == 2 else q0
        else:
            # only the block's B x B entries of bfull are gathered; the
            # update of u reads the rows it needs in place
            ix = torch.tensor(blk, dtype=torch.long, device=Q.device)
            idx = ix
            # (a gather is faster than index_select along the last dim)
            gidx = ix.expand(G, m, B)
            q0, u0 = Q.gather(2, gidx), U.gather(2, gidx)
            cb = cta.gather(2, gidx)
            b0 = plane.gather(2, gidx) if mode == 2 else q0
        if mode == 2:
            # the plane's target: t - (q - pj b) = pj b - u + cta / s
            tb = torch.addcmul(b0 * pj - u0, cb, inv_s)
        else:
            tb = torch.addcmul(q0 - u0, cb, inv_s)
        if idx is None:
            bb = bfull[:, c0:c1, c0:c1].clone()
        else:
            bb = bfull.view(G, -1).index_select(
                1, (ix.unsqueeze(1) * N + ix).view(-1)).view(G, B, B)
        torch.diagonal(bb, dim1=1, dim2=2).zero_()
        # tb: (G, m, B) targets of the block; bb[:, i, j]: drop of target
        # j per unit move of q_i (zero diagonal: t_i does not depend on
        # q_i).
        if mode == 1:
            zb = torch.mul(q0, nb).add_(top * nb + off)
        else:
            zb = b0.clone(memory_format=torch.contiguous_format)
        moved = _visit_block(tb, zb, bb.triu(1), mode, table, top, nb,
                             pos[pos.numel() - B:], compact, pj)
        if not moved:
            continue
        if mode == 1:  # back from keys to integers (exact: small integers)
            zb.sub_(top * nb + off).div_(nb)
        if mode == 2:
            # (b0 may be a view of the plane: the step before the write)
            delta = (zb - b0).mul_(pj)
            if idx is None:
                plane[:, :, c0:c1] = zb
            else:
                plane.scatter_(2, gidx, zb)
        else:
            delta = zb.sub_(q0)  # (G, m, B)
        if sparse_ok and _apply_sparse(Q, U, Ct, c, d, delta, bb, c0, idx,
                                       bfull, diag, sparse):
            continue
        if idx is None:
            c += (delta * Ct[:, :, c0:c1]).sum(2)
            a = diag[:, :, c0:c1]
        else:
            c += (delta * Ct.gather(2, gidx)).sum(2)
            a = diag.index_select(2, idx)
        # (A delta) on the block = a * (delta + delta @ bb)
        ad = torch.bmm(delta, bb).add_(delta)
        d += ad.add_(u0, alpha=2).mul_(delta).mul_(a).sum(2)
        if idx is None:
            Q[:, :, c0:c1] += delta
            U.baddbmm_(delta, bfull[:, c0:c1])
        else:
            Q.scatter_add_(2, gidx, delta)
            if c1 - c0 <= 2 * B:
                # the span's rows as a view, the gaps of delta zero
                span = delta.new_zeros(G, m, c1 - c0)
                span.index_copy_(2, idx - c0, delta)
                U.baddbmm_(span, bfull[:, c0:c1])
            else:
                U.baddbmm_(delta, bfull.index_select(1, idx))


def _apply_sparse(Q: Tensor, U: Tensor, Ct: Tensor, c: Tensor, d: Tensor,
                  delta: Tensor, bb: Tensor, c0: int, idx: Optional[Tensor],
                  bfull: Tensor, diag: Tensor, sparse: float) -> bool:
    """Apply a block's moves ``delta`` as a sparse matrix, if it is one.

    For a single group on the CPU with at most ``sparse`` of ``delta``
    non-zero (typical after the first round): ``u += delta B_rows`` as a
    CSR product whose columns are the global coordinates (only the rows
    of ``bfull`` of the moved coordinates are read), and ``q``, ``c`` and
    ``d`` from the non-zeros alone.

    Returns:
        bool: Whether the moves were applied (else nothing changed).
    """
    dl = delta[0]
    m, B = dl.shape[0], dl.shape[1]
    nz = dl.nonzero()  # row-major: already in CSR order
    if nz.shape[0] > sparse * m * B:
        return False
    N = Q.shape[2]
    rows, cols = nz[:, 0], nz[:, 1]
    vals = dl.reshape(-1).take(rows * B + cols)
    if idx is None:
        gcols = cols + c0
    else:
        gcols = idx.take(cols)
    flat = rows * N + gcols
    crow = rows.new_zeros(m + 1)
    torch.cumsum(torch.bincount(rows, minlength=m), 0, out=crow[1:])
    local = torch.sparse_csr_tensor(crow, cols, vals, [m, B],
                                    dtype=vals.dtype)
    # (A delta) / a on the block's non-zeros: delta + delta @ bb
    ad = torch.sparse.mm(local, bb[0]).view(-1).take(rows * B + cols)
    ad.add_(vals)
    # c += C^T delta; d += delta^T A (2 q + delta) = sum delta a
    # (2 u + (A delta) / a), with u read before the update
    c[0].index_add_(0, rows, vals * Ct[0].reshape(-1).take(flat))
    du = U[0].reshape(-1).take(flat).mul_(2).add_(ad).mul_(vals)
    d[0].index_add_(0, rows, du.mul_(diag.reshape(-1).take(gcols)))
    Q[0].view(-1).index_add_(0, flat, vals)
    # u += delta B_rows. A CSR product passes over all of u; a COO one
    # costs about twice as much per non-zero but nothing else, and wins
    # below about one non-zero per 2048 entries of u.
    if nz.shape[0] * 2048 < m * N:
        glob = torch.sparse_coo_tensor(torch.stack([rows, gcols]), vals,
                                       [m, N], dtype=vals.dtype,
                                       is_coalesced=True)
    else:
        glob = torch.sparse_csr_tensor(crow, gcols, vals, [m, N],
                                       dtype=vals.dtype)
    U[0].addmm_(glob, bfull[0])
    return True


@functools.lru_cache(maxsize=None)
def _scripted_sweep() -> Callable[..., None]:
    """:func:`_sweep_blocks` compiled by TorchScript (once, on first use;
    the Python function if TorchScript is unavailable)."""
    try:
        return torch.jit.script(_sweep_blocks)
    except Exception as err:  # e.g. no source access, TorchScript removed
        warnings.warn('mmquant: TorchScript could not compile the solver '
                      f'sweep ({type(err).__name__}: {err}); running it in '
                      'Python (same results, slower)')
        return _sweep_blocks


def _kernel() -> Callable[..., None]:
    """The block sweep: scripted if :data:`USE_TORCHSCRIPT`, else the
    Python function (identical results)."""
    return _scripted_sweep() if USE_TORCHSCRIPT else _sweep_blocks


def _block_size(tile_rows: int) -> int:
    """Coordinates per block for ``tile_rows`` channels (all groups).

    With one intra-op thread, :data:`_BLOCK`; with more, small enough for
    a ``tile_rows x block`` tile to stay below torch's threshold for
    multi-threaded element-wise kernels (the per-iteration updates are too
    small to gain from threads).
    """
    if torch.get_num_threads() <= 1:
        return _BLOCK
    return max(16, min(_BLOCK, _TILE // max(1, tile_rows)))


@functools.lru_cache(maxsize=None)
def _positions(B: int, device: torch.device) -> Tensor:
    """``uint8`` weights ``B, B - 1, ..., 1`` (``B <= 255``)."""
    return torch.arange(B, 0, -1, dtype=torch.uint8, device=device)


def _select(tensors: Tuple[Tensor, ...], idx: Optional[Tensor],
            ws: Optional[_Workspace] = None,
            tag: str = '') -> Tuple[Tensor, ...]:
    """Channels ``idx`` (dim 1) of each tensor; the tensors if None.

    With a workspace, the selections of the ``(G, m, N)`` tensors are
    written into its buffers ``tag``/position (valid until the next call
    with the same tag): a fresh multi-megabyte copy per round cost more in
    page faults than the copy itself.
    """
    if idx is None:
        return tensors
    out = []
    for i, t in enumerate(tensors):
        if ws is None or t.dim() < 3 or t.shape[2] == 1:
            out.append(t.index_select(1, idx))
            continue
        shape = (t.shape[0], idx.numel(), t.shape[2])
        out.append(torch.index_select(
            t, 1, idx, out=ws.get(f'{tag}/{i}', shape, t.dtype)))
    return tuple(out)


def _solve_batched(weight: Tensor, A: Tensor, C: Tensor, yy: Tensor,
                   bits: int, max_rounds: int, schedule: str,
                   q_init: Optional[Tensor],
                   scale_init: Optional[Tensor]) -> Tuple[Tensor, ...]:
    """Solve ``G`` independent problems at once.

    Args:
        weight: ``(G, Mg, N)`` float64.
        A: ``(G, N, N)`` float64, symmetric.
        C: ``(G, N, Mg)`` float64.
        yy: ``(G, Mg)`` float64.
        bits: Bit width.
        max_rounds: Round cap per phase.
        schedule: One of :data:`SCHEDULES` (already checked).
        q_init: Optional ``(G, Mg, N)`` float64 integers.
        scale_init: Optional ``(G, Mg)`` float64 scales.

    Returns:
        tuple: ``q (G, Mg, N)`` float64, ``scale (G, Mg)`` float32,
        objective_init ``(G, Mg)``, objective ``(G, Mg)``, rounds, history.
    """
    G, Mg, N = weight.shape
    _check_gram(A, C)
    with _solver_threads():
        q, s = _initial(weight, bits, q_init, scale_init)
    h = torch.bmm(q, A)  # one large GEMM: torch's own thread setting
    with _solver_threads():
        Ct = C.transpose(1, 2).contiguous()
        st = _BatchedSolver(A, Ct, yy, q, s, bits, h)
        obj_init = st.obj.clone()
        if N > 0 and Mg > 0 and max_rounds > 0:
            if schedule == 'paper':
                st.run_paper(bits, max_rounds)
            else:
                if schedule != 'integer':
                    st.run_phase(False, max_rounds)
                if schedule != 'canonical-planes':
                    st.run_phase(True, max_rounds)
        scale32 = st.s.to(torch.float32)
        s64 = scale32.to(torch.float64)
        # Objective with the stored (float32) scales; c is exact, d up to
        # the rounding of the incremental updates.
        obj = yy - 2 * s64 * st.c + s64 * s64 * st.d
    return st.q, scale32, obj_init, obj, st.rounds, st.history


def _initial(weight: Tensor, bits: int, q_init: Optional[Tensor],
             scale_init: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Initial ``q (G, Mg, N)`` and ``s (G, Mg)``: MSE-RTN or given."""
    G, Mg, N = weight.shape
    top = qmax(bits)
    w2 = weight.reshape(G * Mg, N)
    if q_init is None and scale_init is None:
        q2, s2 = mse_rtn_float64(w2, bits)
    elif q_init is None:
        s2 = scale_init.reshape(-1)
        q2 = torch.clamp(torch.round(w2 / s2[:, None]), -top, top)
    else:
        q2 = q_init.reshape(G * Mg, N)
        if scale_init is None:
            num, den = (w2 * q2).sum(1), (q2 * q2).sum(1)
            ok = (num > 0) & (den > 0)
            s2 = torch.where(ok, num / torch.where(ok, den, 1.0), 1.0)
        else:
            s2 = scale_init.reshape(-1)
    return q2.reshape(G, Mg, N).clone(), s2.reshape(G, Mg).clone()


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
        weight: Float weights ``(M, N)`` (one row per output channel); used
            for the MSE-RTN initialisation (and for ``yy`` when absent).
        A: ``(N, N)`` Gram matrix ``X^T X``; the computation runs on its
            device, in float64.
        C: ``(N, M)`` cross term ``X^T Y``.
        bits: Bit width, ``2..8``.
        yy: ``(M,)`` squared target norms ``||y_m||^2``. If ``None``,
            ``w_m^T A w_m`` is used, which is exact when the targets are
            the float outputs ``Y = X W^T`` (it only shifts the reported
            objective, never the solution).
        max_rounds: Round cap of each phase (for
            ``'canonical-planes+integer'``: of the plane rounds and of the
            integer rounds); for ``'paper'`` the number of rounds (the
            authors' ``max_epoch``; rounds after all channels stopped
            changing are skipped, they would change nothing).
        schedule: Which coordinate updates the rounds make, one of
            :data:`SCHEDULES`: ``'integer'`` (each coordinate moves to its
            best integer; never worse than a bit-plane move, and in
            mmquant's measurements lower in objective on average and in
            fewer rounds, see ``docs/solver.md``), ``'paper'`` (the
            authors' update on independent ternary planes, see the module
            docstring), ``'canonical-planes'`` (single changes of the
            canonical bit planes; not the paper's update) or
            ``'canonical-planes+integer'`` (those rounds until nothing
            changes, then integer rounds).
        q_init: Optional initial integers ``(M, N)`` (instead of MSE-RTN).
        scale_init: Optional initial positive scales ``(M,)``.

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
    _check_finite(W, 'weight')
    _check_finite(A64, 'A (input statistics X^T X)')
    _check_finite(C64, 'C (statistics X^T Y)')
    if yy is None:
        yy64 = ((A64 @ W.t()) * W.t()).sum(0)
    else:
        if tuple(yy.shape) != (M, ):
            raise ValueError(f'yy must be ({M},), got {tuple(yy.shape)}')
        yy64 = _as64(yy, dev)
        _check_finite(yy64, 'yy (statistics sum y^2)')
    qi, si = _check_init(q_init, scale_init, M, N, bits, dev)
    q, s, oi, o, rounds, hist = _solve_batched(
        W[None], A64[None], C64[None], yy64[None], bits, int(max_rounds),
        schedule, None if qi is None else qi[None],
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
    qi = si = None
    if q_init is not None:
        if q_init.numel() != M * N:
            raise ValueError(f'q_init must have {M * N} elements '
                             f'({M} channels), got {tuple(q_init.shape)}')
        qi = _as64(q_init.reshape(M, N), dev)
        _check_finite(qi, 'q_init')
        top = qmax(bits)
        if not torch.equal(qi, qi.round()) or bool((qi.abs() > top).any()):
            raise ValueError(f'q_init must hold integers in [-{top}, {top}]')
    if scale_init is not None:
        si = _as64(scale_init.reshape(-1), dev)
        if si.numel() != M:
            raise ValueError(f'scale_init must have {M} elements, '
                             f'got {tuple(scale_init.shape)}')
        _check_finite(si, 'scale_init')
        if bool((si <= 0).any()):
            raise ValueError('scale_init must be positive')
    return qi, si


def solve_layer(weight: Tensor,
                acc,
                bits: int,
                max_rounds: int = 100,
                schedule: str = 'integer') -> SolverResult:
    """Solve every group of a conv/linear layer from its statistics.

    All groups (e.g. the channels of a depthwise conv) are solved together
    as one batched problem.

    Args:
        weight: The layer weight, ``(M, Cin/G, kh, kw)`` or ``(M, N)``.
        acc: A :class:`~mmquant.core.stats.StatsAccumulator` holding the
            layer's statistics.
        bits: Bit width, ``2..8``.
        max_rounds: Round cap of each phase.
        schedule: See :func:`bitsplit_solve`.

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
    _check_finite(W, 'weight')
    _check_finite(A64, 'A (input statistics X^T X)')
    _check_finite(C64, 'C (statistics X^T Y)')
    _check_finite(yy64, 'yy (statistics sum y^2)')
    q, s, oi, o, rounds, hist = _solve_batched(W, A64, C64, yy64, bits,
                                               int(max_rounds),
                                               schedule, None,
                                               None)
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
