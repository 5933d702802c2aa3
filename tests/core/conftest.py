"""Shared problem generators for the core tests."""
import math
from typing import Callable, Dict

import pytest
import torch


def relu_rows(K: int, N: int, seed: int, rank: int = 3) -> torch.Tensor:
    """Post-ReLU-like correlated input rows ``(K, N)``, float64.

    A low-rank shared component plus independent noise and a per-column
    offset, then ReLU: correlated columns, many exact zeros, like the
    im2col rows of a conv after a ReLU.
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


@pytest.fixture
def problem() -> Callable[..., Dict]:
    """Factory fixture: ``problem(N, M, K, seed)``."""
    return make_problem


@pytest.fixture
def rows() -> Callable[..., torch.Tensor]:
    """Factory fixture: ``rows(K, N, seed)`` post-ReLU-like rows."""
    return relu_rows
