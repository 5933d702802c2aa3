"""Shared fixtures of the benchmark-path tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on 2 shared cores the real-model forwards and
    conversions of these tests are much slower with two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
