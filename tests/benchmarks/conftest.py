"""Shared fixtures and helpers of the benchmark-path tests."""
import importlib.util
import os.path as osp
from types import ModuleType

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load_tool(*parts: str) -> ModuleType:
    """Import the script ``tools/<parts>`` as a module (``tools/`` is not
    a package).

    Args:
        *parts: Path of the script below ``tools/``.

    Returns:
        ModuleType: The executed module, ``mmquant_tool_<script name>``.
    """
    name = 'mmquant_tool_' + osp.splitext(parts[-1])[0]
    spec = importlib.util.spec_from_file_location(
        name, osp.join(ROOT, 'tools', *parts))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on 2 shared cores the real-model forwards and
    conversions of these tests are much slower with two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
