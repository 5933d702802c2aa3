"""The direct port of the paper's solver: the reference for benchmarks.

:func:`direct_port` computes what the authors' released code computes in
every round of its output-reconstruction step (``ofwa_rr``), from the
explicit calibration rows ``X`` and in float32 as their numpy code does.
mmquant's ``schedule='paper'`` makes the same updates on the sufficient
statistics (see :mod:`mmquant.core.solver` and ``docs/solver.md``).
"""
import time
from typing import Dict, List

import torch
from torch import Tensor

from mmquant.core.grid import split_planes, stitch_planes
from mmquant.core.rtn import mse_rtn

__all__ = ['direct_port', 'synchronize']


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timings on CUDA)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def direct_port(X: Tensor, Y: Tensor, W: Tensor, bits: int,
                rounds: int) -> Dict:
    """The paper's output-reconstruction rounds, computed as its code does.

    Fixed-point convention of the paper: ``w = alpha * sum_j 2^-j B_j``
    with ternary planes ``B_j`` (plane 0 most significant) and
    ``alpha = s * 2^(k-2)``. Per round: closed-form ``alpha`` from
    ``X B^T``; then per plane ``j``: ``Y_res = Y - X (alpha B_others)^T``,
    ``T = Y_res^T X`` and for every coordinate ``n`` (all channels at
    once) ``lump = 2 (alpha_j (A[n] B^T) - T[:, n])`` with ``B[:, n] = 0``,
    ``B[:, n] = -sign(lump)``, zeroed where ``|lump| < alpha_j A[n, n]``.

    Args:
        X (Tensor): ``(K, N)`` float32 calibration rows.
        Y (Tensor): ``(K, M)`` float32 targets.
        W (Tensor): ``(M, N)`` float weights (for the initialisation).
        bits (int): Bit width.
        rounds (int): Number of rounds to run.

    Returns:
        dict: ``q`` (int, ``(M, N)``), ``scale`` ``(M,)``, ``init_s`` (the
        initialisation time) and ``round_s`` (per-round times).
    """
    dev = X.device
    synchronize(dev)
    t0 = time.perf_counter()
    q0, s0 = mse_rtn(W, bits)  # the paper's weight-error step is a no-op
    planes = list(split_planes(q0, bits).float().unbind(0))
    frac = [2.0**-j for j in range(bits - 1)]
    alpha = s0 * 2**(bits - 2)
    A = X.t() @ X
    synchronize(dev)
    init_s = time.perf_counter() - t0
    round_s: List[float] = []
    N = X.shape[1]
    for _ in range(rounds):
        t1 = time.perf_counter()
        bsum = sum(p * f for p, f in zip(planes, frac))
        XB = X @ bsum.t()
        alpha = (Y * XB).sum(0) / (XB * XB).sum(0)
        for j in range(bits - 1):
            B = planes[j]
            # (at W2 there is no other plane: zeros)
            others = sum((p * f for i, (p, f) in enumerate(zip(planes, frac))
                          if i != j), torch.zeros_like(B))
            Yres = Y - X @ (others * alpha[:, None]).t()
            T = Yres.t() @ X
            sj = alpha * frac[j]
            for n in range(N):
                B[:, n] = 0
                ABn = B @ A[n]
                lump = 2 * (ABn * sj - T[:, n])
                B[:, n] = -torch.sign(lump)
                B[lump.abs() < sj * A[n, n], n] = 0
        synchronize(dev)
        round_s.append(time.perf_counter() - t1)
    q = stitch_planes(torch.stack(planes).to(torch.int8), bits)
    scale = alpha / 2**(bits - 2)
    return dict(q=q, scale=scale, init_s=init_s, round_s=round_s)
