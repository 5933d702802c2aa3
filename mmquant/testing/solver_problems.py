"""Generated BitSplit problems for the solver's tests and benchmarks.

Two generators, both deterministic for a seed:

* :func:`make_problem`: a small reconstruction problem on post-ReLU-like
  correlated input rows (:func:`relu_rows`), with its statistics; the core
  tests' problem.
* :func:`make_layer_problem`: a 3x3 conv on spatially and channel
  correlated post-ReLU-like feature maps, as im2col rows; the problem of
  the solver benchmarks (``tools/analysis_tools/benchmark_solver.py``,
  ``tools/analysis_tools/benchmark_schedules.py``), whose statistics
  :func:`statistics_f64` streams.
"""
import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'relu_rows', 'make_problem', 'make_layer_problem', 'statistics_f64'
]


def relu_rows(K: int, N: int, seed: int, rank: int = 3) -> Tensor:
    """Post-ReLU-like correlated input rows ``(K, N)``, float64.

    A low-rank shared component plus independent noise and a per-column
    offset, then ReLU: correlated columns, many exact zeros, like the
    im2col rows of a conv after a ReLU.

    Args:
        K (int): Rows.
        N (int): Columns (inputs).
        seed (int): Random seed.
        rank (int): Rank of the shared component. Defaults to 3.

    Returns:
        Tensor: ``(K, N)`` float64.
    """
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(rank, N, generator=g, dtype=torch.float64)
    z = torch.randn(K, rank, generator=g, dtype=torch.float64) @ U
    z = z / math.sqrt(rank) + 0.7 * torch.randn(
        K, N, generator=g, dtype=torch.float64)
    bias = 0.5 * torch.randn(N, generator=g, dtype=torch.float64)
    return torch.relu(z + bias)


def make_problem(N: int, M: int, K: int, seed: int = 0) -> Dict:
    """A random but realistic reconstruction problem.

    Args:
        N (int): Inputs.
        M (int): Output channels.
        K (int): Calibration rows.
        seed (int): Random seed. Defaults to 0.

    Returns:
        dict: ``X (K, N)``, ``W (M, N)`` (float32 weights), ``Y = X W^T``
        and the statistics ``A``, ``C``, ``yy`` (float64).
    """
    X = relu_rows(K, N, seed)
    g = torch.Generator().manual_seed(seed + 100)
    W = torch.randn(M, N, generator=g) * torch.exp(
        0.3 * torch.randn(M, 1, generator=g)) / math.sqrt(N)
    Y = X @ W.double().t()
    return dict(X=X, W=W, Y=Y, A=X.t() @ X, C=X.t() @ Y,
                yy=(Y * Y).sum(0))


def make_layer_problem(cin: int, cout: int, rows: int, seed: int) -> Dict:
    """A 3x3 conv on post-ReLU-like, spatially and channel-correlated maps.

    Feature maps are smoothed Gaussian noise plus a low-rank shared channel
    component and a per-channel offset, then ReLU (about half the values
    are exact zeros, neighbouring pixels and channels are correlated).
    Weights are Kaiming-scaled Gaussians with a log-normal per-channel
    spread. Targets are the float conv outputs.

    Args:
        cin (int): Input channels.
        cout (int): Output channels.
        rows (int): Number of im2col rows (output pixels) to generate.
        seed (int): Random seed.

    Returns:
        dict: ``X (rows, 9 cin)`` float32, ``Y (rows, cout)`` float32 and
        ``W (cout, 9 cin)`` float32.
    """
    g = torch.Generator().manual_seed(seed)
    side = 64 if rows >= 4096 else 32
    batch = max(1, rows // (side * side))
    z = torch.randn(batch, cin, side + 2, side + 2, generator=g)
    blur = torch.tensor([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]) / 16
    z = F.conv2d(z, blur.expand(cin, 1, 3, 3).contiguous(), groups=cin)
    rank = max(cin // 8, 1)
    U = torch.randn(cin, rank, generator=g) / math.sqrt(rank)
    shared = torch.randn(batch, rank, side, side, generator=g)
    z = 0.6 * z + torch.einsum('cr,brhw->bchw', U, shared)
    offset = 0.5 * torch.randn(cin, generator=g)
    x = torch.relu(z + offset[None, :, None, None])
    w = torch.randn(cout, cin, 3, 3, generator=g)
    w = w * torch.exp(0.5 * torch.randn(cout, 1, 1, 1, generator=g))
    w = w * math.sqrt(2.0 / (cin * 9))
    y = F.conv2d(x, w, padding=1)
    X = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, cin * 9)
    Y = y.flatten(2).transpose(1, 2).reshape(-1, cout)
    return dict(X=X[:rows].contiguous(), Y=Y[:rows].contiguous(),
                W=w.reshape(cout, -1))


def statistics_f64(X: Tensor,
                   Y: Tensor,
                   chunk: int = 4096) -> Tuple[Tensor, Tensor, Tensor]:
    """The statistics of rows ``X`` and targets ``Y``, streamed by rows.

    Args:
        X (Tensor): ``(K, N)`` input rows.
        Y (Tensor): ``(K, M)`` targets.
        chunk (int): Rows per step. Defaults to 4096.

    Returns:
        tuple[Tensor]: ``A = X^T X`` ``(N, N)``, ``C = X^T Y`` ``(N, M)``
        and ``yy`` ``(M,)`` (squared target norms), float64.
    """
    N, M = X.shape[1], Y.shape[1]
    A = X.new_zeros(N, N, dtype=torch.float64)
    C = X.new_zeros(N, M, dtype=torch.float64)
    yy = X.new_zeros(M, dtype=torch.float64)
    for r in range(0, X.shape[0], chunk):
        x = X[r:r + chunk].double()
        y = Y[r:r + chunk].double()
        A.addmm_(x.t(), x)
        C.addmm_(x.t(), y)
        yy += (y * y).sum(0)
    return A, C, yy
