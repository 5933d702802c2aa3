"""The solver's batched round machinery: state, rounds, phases.

:func:`solve_batched` solves ``G`` independent problems at once (the
groups of a layer; one for :func:`~mmquant.core.solver.bitsplit_solve`).
It initialises the integers and scales, builds the state of
:class:`_BatchedSolver` and runs the phases of a schedule, each a sequence
of rounds of one coordinate update (see
:data:`mmquant.core.solver.sweep.UPDATES`): a round takes the closed-form
scale, then one Gauss-Seidel pass (:func:`~.sweep.sweep`) over the
coordinates. Channels that stop improving leave a compact working set, so
later rounds only touch the channels that still move.
"""
import contextlib
import functools
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..grid import qmax, split_planes
from ..rtn import mse_rtn_float64
from .sweep import sweep

__all__ = ['solve_batched']

# A coordinate is a candidate of a round only if its best move lowers
# (q[n] - t)^2 by more than _TOL (in units of a * s^2); convergence is
# declared when no coordinate is a candidate. Protects against endless
# flip-flopping on rounding noise when t sits on a tie.
_TOL = 1e-9
# A channel stays in the rounds that visit every coordinate while a round
# lowers its objective by more than _TOL_ROUND * ||y||^2.
_TOL_ROUND = 1e-13
# A round sweeps (and the next round checks) only the channels with a
# candidate once they are at most this fraction of the current ones
# (gathering them costs about as much as a few passes over all).
_SHRINK = 0.8
# Intra-op threads used by the solver's rounds (None: leave torch's setting).
# The rounds are thousands of small tensor operations; waking a thread pool
# for each costs more than it gains, and on a machine shared with other
# jobs it can cost milliseconds per operation.
SOLVER_THREADS: Optional[int] = 1


@contextlib.contextmanager
def _solver_threads() -> Iterator[None]:
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
        bits (int): The bit width.

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
    state (the working set, see :meth:`round_canonical`), which shrinks with
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
        # (q, u, cta, Ct, s, yy, c, d), see round_canonical
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

    def round_integer(self) -> bool:
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
        self._sweep(q, u, cta, inv_s, Ct, c, d, list(range(q.shape[2])),
                    'integer')
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

    def round_canonical(self) -> bool:
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
            self._sweep(q, u, cta, inv_s, Ct, c, d, coords,
                        'canonical-planes')
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
               update: str, plane: Optional[Tensor] = None,
               pj: float = 1.0) -> None:
        """One Gauss-Seidel pass over ``coords`` with this state's tables
        (see :func:`~mmquant.core.solver.sweep.sweep`), in place."""
        sweep(Q, U, cta, inv_s, Ct, c, d, coords, update, self.bfull,
              self.diag, self.table, self.top, self.nb, self.off, plane, pj)

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
            bits (int): The bit width.
            max_rounds (int): Number of rounds.
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
                self._sweep(q, u, cta, inv_s, Ct, c, d, coords, 'paper',
                            pl[j], pj)
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

    def run_phase(self, update: str, max_rounds: int) -> None:
        """Rounds of ``update`` (``'integer'`` or ``'canonical-planes'``)
        until nothing moves or ``max_rounds``."""
        self.wch = None
        self.work = (self.q, self.u, self.cta, self.Ct, self.s, self.yy,
                     self.c, self.d)
        for _ in range(max_rounds):
            moved = (self.round_integer() if update == 'integer' else
                     self.round_canonical())
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


def solve_batched(weight: Tensor, A: Tensor, C: Tensor, yy: Tensor,
                  bits: int, max_rounds: int, phases: Sequence[str],
                  q_init: Optional[Tensor],
                  scale_init: Optional[Tensor]) -> Tuple[Tensor, ...]:
    """Solve ``G`` independent problems at once (inputs already checked).

    Args:
        weight (Tensor): ``(G, Mg, N)`` float64.
        A (Tensor): ``(G, N, N)`` float64, symmetric.
        C (Tensor): ``(G, N, Mg)`` float64.
        yy (Tensor): ``(G, Mg)`` float64.
        bits (int): Bit width.
        max_rounds (int): Round cap per phase.
        phases (Sequence[str]): The update of each phase of the schedule,
            in order, from :data:`~mmquant.core.solver.sweep.UPDATES`:
            ``'paper'`` runs the authors' rounds
            (:meth:`_BatchedSolver.run_paper`), the others rounds of
            that update until nothing moves
            (:meth:`_BatchedSolver.run_phase`).
        q_init (Tensor, optional): ``(G, Mg, N)`` float64 integers.
        scale_init (Tensor, optional): ``(G, Mg)`` float64 scales.

    Returns:
        tuple: ``q (G, Mg, N)`` float64, ``scale (G, Mg)`` float32,
        objective_init ``(G, Mg)``, objective ``(G, Mg)``, rounds, history.
    """
    G, Mg, N = weight.shape
    with _solver_threads():
        q, s = _initial(weight, bits, q_init, scale_init)
    h = torch.bmm(q, A)  # one large GEMM: torch's own thread setting
    with _solver_threads():
        Ct = C.transpose(1, 2).contiguous()
        st = _BatchedSolver(A, Ct, yy, q, s, bits, h)
        obj_init = st.obj.clone()
        if N > 0 and Mg > 0 and max_rounds > 0:
            for update in phases:
                if update == 'paper':
                    st.run_paper(bits, max_rounds)
                else:
                    st.run_phase(update, max_rounds)
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
