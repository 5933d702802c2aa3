"""The rooms of mmquant.checkpoint keep to their jobs.

* Only :mod:`mmquant.checkpoint.safe_load` calls ``torch.load``: every
  checkpoint file, INT or float, is read through its guards.
* No module imports a private (``_``-prefixed) name from a sibling: what
  modules share is public in the module that owns it.
"""
import ast
import os
import os.path as osp
from typing import List

import pytest

import mmquant.checkpoint

PACKAGE = osp.dirname(mmquant.checkpoint.__file__)
MODULES = [
    '__init__', 'container', 'errors', 'float_loading', 'inspection',
    'int_model', 'layer_records', 'packing', 'safe_load'
]


def _tree(module: str) -> ast.Module:
    """Parse ``mmquant/checkpoint/<module>.py``."""
    with open(osp.join(PACKAGE, f'{module}.py'), encoding='utf-8') as f:
        return ast.parse(f.read())


def _torch_load_calls(tree: ast.Module) -> List[int]:
    """Line numbers of the ``torch.load(...)`` calls in a module."""
    return [
        node.lineno for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute) and node.func.attr == 'load'
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == 'torch'
    ]


def test_modules_listed():
    # A new module must be added to MODULES so the checks below see it.
    on_disk = sorted(
        osp.splitext(name)[0] for name in os.listdir(PACKAGE)
        if name.endswith('.py'))
    assert on_disk == MODULES


@pytest.mark.parametrize('module', MODULES)
def test_torch_load_only_in_safe_load(module):
    calls = _torch_load_calls(_tree(module))
    if module == 'safe_load':
        assert len(calls) == 1
    else:
        assert calls == [], (f'{module}.py calls torch.load at lines '
                             f'{calls}; read files with '
                             'safe_load.safe_torch_load')


@pytest.mark.parametrize('module', MODULES)
def test_no_private_imports_between_modules(module):
    private = [
        f'{node.module}.{alias.name}' for node in ast.walk(_tree(module))
        if isinstance(node, ast.ImportFrom) and (
            node.level > 0
            or (node.module or '').startswith('mmquant.checkpoint'))
        for alias in node.names if alias.name.startswith('_')
    ]
    assert private == [], (f'{module}.py imports private names {private} '
                           'from a sibling module')
