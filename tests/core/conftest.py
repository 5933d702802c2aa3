"""Fixtures of the core tests: the generated solver problems of
:mod:`mmquant.testing.solver_problems`."""
from typing import Callable, Dict

import pytest
import torch

from mmquant.testing import make_problem, relu_rows


@pytest.fixture
def problem() -> Callable[..., Dict]:
    """Factory fixture: ``problem(N, M, K, seed)``."""
    return make_problem


@pytest.fixture
def rows() -> Callable[..., torch.Tensor]:
    """Factory fixture: ``rows(K, N, seed)`` post-ReLU-like rows."""
    return relu_rows
