"""The solver's hot loop: one Gauss-Seidel pass over the coordinates.

A round of :mod:`mmquant.core.solver.rounds` calls :func:`sweep` once per
pass. The pass walks the coordinates in blocks; per block it forms the
targets of the block's coordinates once, moves every channel's
coordinates in ascending order (:func:`_visit_block`) and then brings the
state of all coordinates up to date with one product (dense, or sparse
once few coordinates move: :func:`_apply_sparse`).

``update`` names the coordinate update of the pass (see :data:`UPDATES`):
``'integer'`` moves a coordinate to its best integer, ``'canonical-planes'``
to the best value reachable by single changes of its canonical bit planes
(looked up in a table), ``'paper'`` sets one bit of an independent ternary
plane (the authors' update). The block loop runs thousands of small tensor
operations per pass, so it is compiled by TorchScript, whose interpreter
calls them with less overhead than Python (:data:`USE_TORCHSCRIPT`).
"""
import functools
import warnings
from typing import Callable, List, Optional

import torch
from torch import Tensor

__all__ = ['UPDATES', 'sweep']

# The coordinate updates of a pass (the ``update`` argument from the round
# machinery down to the hot loop; a schedule is a sequence of them).
UPDATES = ('integer', 'canonical-planes', 'paper')
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
# Run the block sweep (thousands of small tensor operations per round)
# through TorchScript, whose interpreter calls them with less overhead than
# Python; False runs the same function in Python (for debugging).
USE_TORCHSCRIPT = True


def sweep(Q: Tensor,
          U: Tensor,
          cta: Tensor,
          inv_s: Tensor,
          Ct: Tensor,
          c: Tensor,
          d: Tensor,
          coords: List[int],
          update: str,
          bfull: Tensor,
          diag: Tensor,
          table: Tensor,
          top: int,
          nb: int,
          off: int,
          plane: Optional[Tensor] = None,
          pj: float = 1.0) -> None:
    """One Gauss-Seidel pass over ``coords``, in place.

    Picks the block size and the kernel (:func:`_kernel`) and runs
    :func:`_sweep_blocks`, whose docstring describes the arguments;
    ``plane`` defaults to an empty tensor (it is only read for
    ``update='paper'``).
    """
    if plane is None:
        plane = Q.new_empty(0)
    step = _block_size(Q.shape[0] * Q.shape[1])
    sparse_ok = Q.shape[0] == 1 and Q.device.type == 'cpu'
    kernel = _kernel()
    # (the plain interpreter: the profiling executor re-specialises
    # for the shrinking tiles and gains nothing from them)
    with warnings.catch_warnings(), torch.jit.optimized_execution(False):
        warnings.simplefilter('ignore')  # "CSR support is in beta"
        kernel(Q, U, cta, inv_s, Ct, c, d, coords, step, update, bfull,
               diag, table, top, nb, off, _positions(step, Q.device),
               sparse_ok, _SPARSE, _COMPACT, plane, float(pj))


def _visit_block(tb: Tensor, zb: Tensor, bu: Tensor, update: str,
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
        tb (Tensor): ``(G, m, B)`` targets, overwritten; for ``'paper'``
            the targets of the plane, ``t - (q - pj b)``.
        zb (Tensor): ``(G, m, B)`` the state, updated in place: the
            integers ``q`` (``'integer'``), the plane-table keys
            ``nb q + nb qmax + off`` (``'canonical-planes'``) or the
            plane's values ``b`` (``'paper'``).
        bu (Tensor): ``(G, B, B)`` strictly upper triangle of the target
            drops.
        update (str): One of :data:`UPDATES`: ``'integer'`` (integer
            steps), ``'canonical-planes'`` (canonical bit-plane steps
            from ``table``) or ``'paper'`` (the step of one independent
            plane of weight ``pj``, ``b = sign(e)`` if ``|e| >= pj / 2``,
            else 0).
        table (Tensor): The plane table.
        top (int): ``qmax``.
        nb (int): Table row length (a unit move of ``q`` moves the key by
            it).
        pos (Tensor): ``uint8`` position weights ``B, B - 1, ..., 1``.
        compact (float): :data:`_COMPACT`.
        pj (float): The plane's weight (``'paper'``).

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
        if update == 'canonical-planes':
            # the key is >= 0, so the int32 truncation is a floor (int32:
            # twice as fast to make and to index with as int64)
            key = torch.add(zv, tv.clamp(lo, hi), alpha=2).to(torch.int32)
            step = table.index_select(0, key.view(-1)).view(key.shape)
        elif update == 'paper':
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
        if update == 'canonical-planes':
            z.scatter_add_(2, first, d * nb)
        else:
            z.scatter_add_(2, first, d)
        if update == 'paper':  # a unit step of the plane moves q by pj
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
                  step: int, update: str, bfull: Tensor, diag: Tensor,
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
        Q (Tensor): ``(G, m, N)`` integers (float64), updated in place.
        U (Tensor): ``(G, m, N)`` ``(q A) / diag(A)``, updated in place.
        cta (Tensor): ``(G, m, N)`` ``C^T / diag(A)``.
        inv_s (Tensor): ``(G, m, 1)`` inverse scales.
        Ct (Tensor): ``(G, m, N)`` ``C^T``.
        c (Tensor): ``(G, m)`` ``C^T q``, updated in place.
        d (Tensor): ``(G, m)`` ``q^T A q``, updated in place.
        coords (list[int]): Ascending coordinates to visit.
        step (int): Coordinates per block (at most 255).
        update (str): One of :data:`UPDATES`: ``'integer'`` (integer
            steps), ``'canonical-planes'`` (canonical bit-plane steps
            from ``table``) or ``'paper'`` (the authors' steps of the
            independent plane ``plane``, see :func:`_visit_block`).
        bfull (Tensor): ``(G, N, N)`` ``A[i, j] / A[j, j]``.
        diag (Tensor): ``(G, 1, N)`` ``diag(A)``.
        table (Tensor): The plane table
            (:func:`mmquant.core.solver.rounds._plane_table`).
        top (int): ``qmax``.
        nb (int): Plane-table row length.
        off (int): Plane-table bucket offset.
        pos (Tensor): ``uint8`` position weights ``step, ..., 1``.
        sparse_ok (bool): Whether :func:`_apply_sparse` may be used (one
            group on the CPU).
        sparse (float): :data:`_SPARSE`.
        compact (float): :data:`_COMPACT`.
        plane (Tensor): For ``'paper'``: ``(G, m, N)`` the plane's values
            in ``{-1, 0, 1}`` (float64), updated in place; else unused.
        pj (float): For ``'paper'``: the plane's weight ``2^(k-2-j)``.
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
            b0 = plane[:, :, c0:c1] if update == 'paper' else q0
        else:
            # only the block's B x B entries of bfull are gathered; the
            # update of u reads the rows it needs in place
            ix = torch.tensor(blk, dtype=torch.long, device=Q.device)
            idx = ix
            # (a gather is faster than index_select along the last dim)
            gidx = ix.expand(G, m, B)
            q0, u0 = Q.gather(2, gidx), U.gather(2, gidx)
            cb = cta.gather(2, gidx)
            b0 = plane.gather(2, gidx) if update == 'paper' else q0
        if update == 'paper':
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
        if update == 'canonical-planes':
            zb = torch.mul(q0, nb).add_(top * nb + off)
        else:
            zb = b0.clone(memory_format=torch.contiguous_format)
        moved = _visit_block(tb, zb, bb.triu(1), update, table, top, nb,
                             pos[pos.numel() - B:], compact, pj)
        if not moved:
            continue
        if update == 'canonical-planes':
            # back from keys to integers (exact: small integers)
            zb.sub_(top * nb + off).div_(nb)
        if update == 'paper':
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
