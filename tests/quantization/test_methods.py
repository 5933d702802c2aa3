"""Weight methods as objects: one table read by the config, the
quantizers, ``tools/ptq.py --method`` and the engine."""
import os.path as osp
import subprocess
import sys

import pytest
import torch

import mmquant
from mmquant import QuantConfig
from mmquant.core.rtn import mse_rtn
from mmquant.nn import QuantizedLayer
from mmquant.quantization.methods import (WEIGHT_METHODS, BitSplitMethod,
                                          LayerJob, LayerResult, RTNMethod,
                                          WeightMethod, build_weight_method,
                                          register_weight_method)
from mmquant.quantization.timing import PhaseTimer
from mmquant.quantizers import (PTQQuantizer, RTNQuantizer,
                                quantizer_for)
from mmquant.registry import MODELS

from .models import TinyNet, init_model, smooth_images

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def calib(n=2, bs=8, size=16):
    return list(smooth_images(n * bs, size, 0).split(bs))


def qweights(model):
    return {n: (m.qweight.clone(), m.weight_scale.clone())
            for n, m in model.named_modules()
            if isinstance(m, QuantizedLayer)}


class HalfScaleRTN(WeightMethod):
    """A toy method for the tests: RTN integers at doubled resolution
    clipped to the grid (different integers from RTN on purpose)."""

    name = 'toy-halfscale'
    needs_statistics = False

    def solve(self, job):
        q, scale = mse_rtn(job.weight, job.bits)
        qmax = 2**(job.bits - 1) - 1
        q2 = torch.clamp((job.weight / (scale.reshape(
            -1, *[1] * (job.weight.dim() - 1)) / 2)).round(), -qmax, qmax)
        return LayerResult(qweight=q2.to(torch.int8), scale=scale / 2)


@pytest.fixture
def toy_method():
    register_weight_method(HalfScaleRTN)
    try:
        yield HalfScaleRTN
    finally:
        del WEIGHT_METHODS[HalfScaleRTN.name]


def test_table_holds_the_builtin_methods():
    assert WEIGHT_METHODS == {'bitsplit': BitSplitMethod, 'rtn': RTNMethod}
    assert BitSplitMethod.needs_statistics and not RTNMethod.needs_statistics
    method = build_weight_method(QuantConfig(schedule='paper', damping=0.0,
                                             max_rounds=7))
    assert isinstance(method, BitSplitMethod)
    assert (method.schedule, method.max_rounds, method.damping) == (
        'paper', 7, 0.0)
    assert repr(method) == (
        "BitSplitMethod(schedule='paper', max_rounds=7, damping=0.0, "
        'damping_scales_with_rows=True)')
    assert isinstance(build_weight_method(QuantConfig(method='rtn')),
                      RTNMethod)


@pytest.mark.parametrize('key, value', [('schedule', 'paper'),
                                        ('damping', 0.0),
                                        ('max_rounds', 5),
                                        ('damping_scales_with_rows', False)])
def test_rtn_refuses_bitsplit_options(key, value):
    with pytest.raises(ValueError, match=rf"method 'rtn' does not use "
                       rf"'{key}' \(an option of method 'bitsplit'\)"):
        QuantConfig(method='rtn', **{key: value})
    with pytest.raises(ValueError, match=rf"'{key}' \(an option of method "
                       r"'bitsplit'\)"):
        RTNQuantizer(**{key: value})


def test_config_dict_refuses_a_foreign_key_even_at_its_default():
    # the key is present in the user's dict: it is refused even though
    # its value equals the default
    with pytest.raises(ValueError, match="'max_rounds'"):
        RTNQuantizer(max_rounds=100)
    with pytest.raises(ValueError, match="'schedule'"):
        QuantConfig.from_dict(dict(method='rtn', schedule='integer'))
    # keys shared by all methods stay accepted
    assert RTNQuantizer(rows_per_layer=16384,
                        error_compensation=True).config.method == 'rtn'


def test_bad_method_and_bad_schedule_are_named():
    with pytest.raises(ValueError, match=r"method must be one of "
                       r"\('bitsplit', 'rtn'\), got 'gptq'"):
        QuantConfig(method='gptq')
    with pytest.raises(ValueError, match='schedule'):
        QuantConfig(schedule='sideways')


def test_quantizer_for_reads_the_registered_classes(toy_method):
    assert quantizer_for('bitsplit') == dict(type='mmquant.BitSplitQuantizer')
    assert quantizer_for('rtn') == dict(type='mmquant.RTNQuantizer')
    # a method without its own quantizer class: the generic one
    assert quantizer_for(toy_method.name) == dict(
        type='mmquant.PTQQuantizer', method=toy_method.name)
    with pytest.raises(ValueError, match="got 'nope'"):
        quantizer_for('nope')


def test_generic_quantizer_equals_the_fixed_one():
    model = init_model(TinyNet())
    data = calib()
    fixed = MODELS.build(dict(type='mmquant.RTNQuantizer', w_bits=4))
    generic = MODELS.build(dict(type='mmquant.PTQQuantizer', method='rtn',
                                w_bits=4))
    assert isinstance(generic, PTQQuantizer)
    assert generic.config == fixed.config
    a, _ = fixed.quantize(model, data)
    b, _ = generic.quantize(model, data)
    for (qa, sa), (qb, sb) in zip(qweights(a).values(),
                                  qweights(b).values()):
        assert torch.equal(qa, qb) and torch.equal(sa, sb)


def test_a_new_method_is_one_class(toy_method):
    """Registering a WeightMethod is all it takes: the config, the engine
    and the generic quantizer use it; it gets the activation pass of a
    method without statistics."""
    model = init_model(TinyNet())
    data = calib()
    qmodel, report = mmquant.quantize(
        model, data, QuantConfig(method=toy_method.name, w_bits=4))
    assert report.mode == toy_method.name
    head = model.head.weight.detach()
    q, scale = mse_rtn(head, 8)  # the head is an output layer: 8 bits
    layers = qweights(qmodel)
    expect = torch.clamp((head / (scale[:, None] / 2)).round(), -127, 127)
    assert torch.equal(layers['head'][0], expect.to(torch.int8))
    assert torch.equal(layers['head'][1], scale / 2)
    built = MODELS.build(dict(type='mmquant.PTQQuantizer',
                              method=toy_method.name))
    assert built.config.method == toy_method.name


def test_register_refuses_a_taken_or_empty_name():
    class Dup(RTNMethod):
        name = 'rtn'

    class Nameless(WeightMethod):
        pass

    for cls in (Dup, Nameless):
        with pytest.raises(ValueError, match='empty or already registered'):
            register_weight_method(cls)
    assert WEIGHT_METHODS['rtn'] is RTNMethod


def test_rtn_method_is_mse_rtn():
    w = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    res = RTNMethod().solve(LayerJob(name='x', weight=w, bits=3))
    q, s = mse_rtn(w, 3)
    assert torch.equal(res.qweight, q) and torch.equal(res.scale, s)
    assert res.objective is None


def test_ptq_tool_lists_the_table():
    out = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'ptq.py'), '--help'],
        capture_output=True, text=True, check=True).stdout
    assert '--method {bitsplit,rtn}' in ' '.join(out.split())


def test_phase_timer_nests_exclusively(monkeypatch):
    now = [0.0]
    monkeypatch.setattr('mmquant.quantization.timing.time.perf_counter',
                        lambda: now[0])
    timer = PhaseTimer(('forward', 'statistics', 'bn'))
    with timer('forward'):
        now[0] += 2.0
        with timer('statistics'):
            now[0] += 5.0
        now[0] += 1.0
        assert timer.clock('statistics') == now[0] - 5.0
    with timer('statistics'):
        now[0] += 0.5
    assert timer.seconds == dict(forward=3.0, statistics=5.5, bn=0.0)
    assert timer.total('forward', 'statistics') == 8.5


def test_output_rtn_with_bitsplit_options():
    """``output_method='rtn'`` in a config that sets BitSplit's options:
    the options serve the other layers, the head is rounded."""
    model = init_model(TinyNet())
    cfg = QuantConfig(output_method='rtn', max_rounds=5, damping=0.05,
                      error_compensation=False, rows_per_layer=512)
    qmodel, report = mmquant.quantize(model, calib(), cfg)
    head = {r.name: r for r in report.layers}['head']
    assert head.note == "weight-only MSE rounding (output_method='rtn')"
    q, scale = mse_rtn(model.head.weight.detach(), 8)
    assert torch.equal(qweights(qmodel)['head'][0], q)


def test_bn_reestimation_passes_are_booked_to_bn(monkeypatch):
    """A clock that moves only while the model runs (one second per
    forward): 1 discovery pass + 2 statistics passes are ``forward``, the
    2 BatchNorm passes ``bn``."""
    now = [0.0]
    monkeypatch.setattr('time.perf_counter', lambda: now[0])
    model = init_model(TinyNet())

    def tick(module, args, output):
        now[0] += 1.0
    model.register_forward_hook(tick)
    cfg = dict(w_bits=4, error_compensation=False, rows_per_layer=256)
    _, plain = mmquant.quantize(model, calib(), QuantConfig(**cfg),
                                logger=lambda msg: None)
    _, bn = mmquant.quantize(model, calib(),
                             QuantConfig(bn_reestimation=True, **cfg),
                             logger=lambda msg: None)
    assert (plain.timing['forward'], plain.timing['bn']) == (3.0, 0.0)
    assert (bn.timing['forward'], bn.timing['bn']) == (3.0, 2.0)
    assert bn.timing['total'] == 5.0
