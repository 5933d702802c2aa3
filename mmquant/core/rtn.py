"""MSE-optimal round-to-nearest (RTN) per output channel.

For one output channel with weights ``w`` the scale ``s`` and integers ``q``
are chosen by alternating the two exact partial minimisations of
``||w - s q||^2``:

* ``q = clip(round(w / s), -qmax, qmax)`` (best integers for a fixed scale),
* ``s = <w, q> / <q, q>`` (best scale for fixed integers),

starting from ``s = max|w| / qmax`` until ``q`` stops changing. The result is
a fixed point of both steps. This is the initialisation of the BitSplit
solver (:mod:`mmquant.core.solver`).

The paper also refines the bit planes on the weight error after this
initialisation. That step is the output-reconstruction solver with
``X = I`` (``A = I``, ``C = W^T``), where the objective separates per
coordinate into ``s^2 (q_n - w_n / s)^2``: the nearest integer is the best
value over *all* integers of the grid, hence over all bit-plane combinations,
and the scale is already the closed-form optimum. The refinement is therefore
provably a no-op after MSE-RTN and mmquant does not run it (the test suite
checks the no-op property).
"""
from typing import Tuple

import torch
from torch import Tensor

from .checks import check_finite
from .grid import check_bits, qmax

__all__ = ['mse_rtn', 'mse_rtn_float64']


def _alternate_sorted(aw: Tensor, scale: Tensor, top: int,
                      max_iter: int) -> Tensor:
    """Run the scale/round alternation on sorted magnitudes.

    With ``|w|`` sorted per row and its prefix sums, the level counts
    ``#{n: round(|w_n| / s) >= k}`` come from one ``searchsorted`` and give
    ``<w, q> = sum_k S_k`` and ``<q, q> = sum_k (2k - 1) n_k``
    (``S_k``, ``n_k``: sum and count of magnitudes at level ``>= k``), so
    an iteration costs ``O(qmax log N)`` per row instead of ``O(N)``.

    Args:
        aw (Tensor): ``(M, N)`` float64 magnitudes.
        scale (Tensor): ``(M,)`` float64 starting scales.
        top (int): ``qmax``.
        max_iter (int): Iteration cap.

    Returns:
        Tensor: ``(M,)`` scales after the alternation.
    """
    M, N = aw.shape
    srt = aw.sort(dim=1).values
    cums = torch.nn.functional.pad(srt.cumsum(dim=1), (1, 0))
    total = cums[:, -1:]
    k = torch.arange(1, top + 1, device=aw.device, dtype=aw.dtype)
    half = k - 0.5
    odd = 2 * k - 1
    prev = None
    for _ in range(max(int(max_iter), 1)):
        pos = torch.searchsorted(srt, half * scale[:, None])
        if prev is not None and torch.equal(pos, prev):
            break
        num = (total - cums.gather(1, pos)).sum(dim=1)
        den = ((N - pos).to(aw.dtype) * odd).sum(dim=1)
        ok = (den > 0) & (num > 0)
        scale = torch.where(ok, num / torch.where(ok, den, 1.0), scale)
        prev = pos
    return scale


def mse_rtn_float64(w: Tensor, bits: int,
                    max_iter: int = 100) -> Tuple[Tensor, Tensor]:
    """Float64 MSE-RTN on a 2-D weight matrix (the solver's initialiser).

    Args:
        w (Tensor): Float tensor ``(M, N)``, one row per output channel.
        bits (int): The bit width, ``2..8``.
        max_iter (int): Cap on the alternating iterations.

    Returns:
        tuple[Tensor, Tensor]: ``q`` float64 ``(M, N)`` holding integers and
        ``scale`` float64 ``(M,)``. An all-zero row gets ``q = 0`` and
        ``scale = 1.0``.

    Raises:
        ValueError: On an invalid bit width or non-finite weights.
    """
    top = qmax(bits)
    if w.dim() != 2:
        raise ValueError(f'w must be 2-D (M, N), got {tuple(w.shape)}')
    w = w.to(torch.float64)
    check_finite(w, 'weight')
    M, N = w.shape
    aw = w.abs()
    amax = aw.amax(dim=1) if N else w.new_zeros(M)
    scale = torch.where(amax > 0, amax / top, torch.ones_like(amax))
    if N:
        scale = _alternate_sorted(aw, scale, top, max_iter)
    # Exact element-wise alternation from there (normally one pass that
    # only confirms the fixed point; it also settles rounding ties).
    q = torch.clamp(torch.round(w / scale[:, None]), -top, top)
    act = torch.arange(M, device=w.device)
    wa, qa, sa = w, q, scale
    for _ in range(max(int(max_iter), 1)):
        num = (wa * qa).sum(dim=1)
        den = (qa * qa).sum(dim=1)
        ok = (den > 0) & (num > 0)
        sa = torch.where(ok, num / torch.where(ok, den, 1.0), sa)
        scale[act] = sa
        qn = torch.clamp(torch.round(wa / sa[:, None]), -top, top)
        moving = (qn != qa).any(dim=1)
        if not bool(moving.any()):
            break
        sel = moving.nonzero().flatten()
        act = act[sel]
        wa, qa, sa = wa[sel], qn[sel], sa[sel]
        q[act] = qa
    return q, scale


def mse_rtn(weight: Tensor,
            bits: int,
            max_iter: int = 100) -> Tuple[Tensor, Tensor]:
    """MSE-optimal round-to-nearest quantization per output channel.

    Args:
        weight (Tensor): Float tensor ``(M, ...)``; dim 0 is the output
            channel, any trailing dims are flattened per channel.
        bits (int): The bit width, ``2..8``.
        max_iter (int): Cap on the alternating scale/round iterations (the
            fixed point is usually reached in a few).

    Returns:
        tuple[Tensor, Tensor]: ``q``, an ``int8`` tensor with ``weight``'s
        shape and values in ``[-qmax, qmax]``, and ``scale``, a ``float32``
        ``(M,)`` tensor, finite and positive. An all-zero channel gets
        ``q = 0`` and ``scale = 1.0`` (any positive scale reproduces it
        exactly; 1.0 keeps it finite and harmless).

    Raises:
        ValueError: On an invalid bit width, a 0-d weight or NaN/Inf.
    """
    check_bits(bits)
    if weight.dim() < 1:
        raise ValueError('weight must have at least one dimension')
    q, scale = mse_rtn_float64(
        weight.reshape(weight.shape[0], -1), bits, max_iter=max_iter)
    return (q.to(torch.int8).reshape(weight.shape),
            scale.to(torch.float32))
