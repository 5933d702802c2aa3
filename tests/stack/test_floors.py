"""The package is built in floors (docs/architecture.md): a room imports
only rooms of lower floors, and the pure-torch floors import no OpenMMLab
package at module level."""
import ast
import os
import os.path as osp
from typing import Dict, Iterator, Set, Tuple

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

#: Floor of every top-level room of the package (docs/architecture.md).
FLOORS = {
    'core': 0, 'fileio': 0, 'version': 0, 'allocator': 0,
    'nn': 1, 'testing': 1,
    'checkpoint': 2,
    'quantization': 3,
    'registry': 4, 'mim': 4,
    'quantizers': 5, 'models': 5, 'deploy': 5, 'visualization': 5,
    'apis': 6,
    '__main__': 7,
}
#: The floors that must run with torch alone.
PURE_TORCH = 3
OPENMMLAB = ('mmengine', 'mmcv', 'mmdet', 'mmpretrain')


def _modules() -> Iterator[Tuple[str, str]]:
    for folder, _, files in os.walk(osp.join(ROOT, 'mmquant')):
        for name in sorted(files):
            if name.endswith('.py'):
                path = osp.join(folder, name)
                yield osp.relpath(path, ROOT)[:-3].replace(os.sep,
                                                           '.'), path


def _top_level_imports(module: str, path: str) -> Set[str]:
    """Absolute names imported by the module's top-level statements
    (imports inside functions load on use and are not counted)."""
    tree = ast.parse(open(path).read())
    parts = module.split('.')
    package = parts if path.endswith('__init__.py') else parts[:-1]
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                out.add('.'.join(base + ([node.module]
                                         if node.module else [])))
            else:
                out.add(node.module)
    return out


def _room(module: str) -> str:
    return module.split('.')[1]


def test_every_room_has_a_floor():
    rooms = {_room(m) for m, _ in _modules() if m.count('.')}
    assert rooms - {'__init__'} <= set(FLOORS), sorted(
        rooms - set(FLOORS) - {'__init__'})


def test_rooms_import_only_lower_floors():
    upward: Dict[str, Set[str]] = {}
    for module, path in _modules():
        room = _room(module)
        if room == '__init__':
            continue  # mmquant/__init__.py gathers the public API
        for name in _top_level_imports(module, path):
            parts = name.split('.')
            if parts[0] == 'mmquant' and len(parts) > 1 and \
                    parts[1] != room and parts[1] in FLOORS and \
                    FLOORS[parts[1]] >= FLOORS[room]:
                upward.setdefault(module, set()).add(name)
    assert not upward, upward


def test_pure_torch_floors_import_no_openmmlab():
    found: Dict[str, Set[str]] = {}
    for module, path in _modules():
        room = _room(module)
        if FLOORS.get(room, 99) > PURE_TORCH:
            continue
        for name in _top_level_imports(module, path):
            if name.split('.')[0] in OPENMMLAB:
                found.setdefault(module, set()).add(name)
    assert not found, found
