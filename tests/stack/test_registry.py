"""mmquant's registries resolve from mmdet and mmpretrain scoped configs."""
import subprocess
import sys
import textwrap

import pytest
from mmengine.registry import DefaultScope


@pytest.fixture
def toy_class():
    """Register a throw-away class in mmquant's MODELS for one test."""
    from mmquant.registry import MODELS

    class ToyQuantThing:

        def __init__(self, bits: int = 4):
            self.bits = bits

    MODELS.register_module(module=ToyQuantThing)
    yield ToyQuantThing
    MODELS._module_dict.pop('ToyQuantThing')


def test_registry_is_child_of_mmengine_root():
    from mmengine.registry import MODELS as ROOT

    from mmquant.registry import MODELS

    assert MODELS.scope == 'mmquant'
    assert MODELS.parent is ROOT
    assert ROOT._children['mmquant'] is MODELS


@pytest.mark.parametrize('scope', ['mmdet', 'mmpretrain'])
def test_build_from_downstream_scope(toy_class, scope):
    if scope == 'mmdet':
        from mmdet.registry import MODELS as DOWNSTREAM
    else:
        from mmpretrain.registry import MODELS as DOWNSTREAM
    with DefaultScope.overwrite_default_scope(scope):
        obj = DOWNSTREAM.build(dict(type='mmquant.ToyQuantThing', bits=3))
    assert isinstance(obj, toy_class)
    assert obj.bits == 3


def test_unknown_mmquant_type_fails_clearly():
    from mmdet.registry import MODELS as DOWNSTREAM

    with DefaultScope.overwrite_default_scope('mmdet'):
        with pytest.raises(KeyError, match='NoSuchQuantizer'):
            DOWNSTREAM.build(dict(type='mmquant.NoSuchQuantizer'))


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_scope_resolves_without_custom_imports():
    """mmengine imports ``mmquant.registry`` on the first 'mmquant.' key."""
    out = _run("""
        import sys
        from mmengine.registry import MODELS as ROOT
        from mmdet.registry import MODELS as DET
        assert 'mmquant' not in sys.modules
        assert 'mmquant' not in ROOT._children
        DET.get('mmquant.Anything')
        assert 'mmquant.registry' in sys.modules
        print(ROOT._children['mmquant'].scope)
    """)
    assert out.strip() == 'mmquant'


def test_import_leaves_other_registries_untouched():
    out = _run("""
        import mmengine.registry as R
        import mmdet.registry as D
        import mmpretrain.registry as P
        def snapshot():
            regs = {}
            for mod in (R, D, P):
                for name in dir(mod):
                    reg = getattr(mod, name)
                    if isinstance(reg, R.Registry):
                        key = (mod.__name__, name)
                        regs[key] = (dict(reg._module_dict),
                                     sorted(reg._children))
            return regs
        before = snapshot()
        import mmquant  # noqa: F401
        import mmquant.registry  # noqa: F401
        after = snapshot()
        changed = []
        for key in before:
            mods_b, kids_b = before[key]
            mods_a, kids_a = after[key]
            if mods_a != mods_b:
                changed.append((key, 'modules'))
            extra = set(kids_a) - set(kids_b)
            if extra - {'mmquant'}:
                changed.append((key, 'children', extra))
        print(changed)
    """)
    assert out.strip() == '[]'
