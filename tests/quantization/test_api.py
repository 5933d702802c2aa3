"""mmquant.quantize on plain PyTorch models."""
import json

import pytest
import torch
from torch import nn

import mmquant
from mmquant import QuantConfig
from mmquant.core.grid import qmax
from mmquant.nn import QuantizedLayer

from .models import DeepNet, TinyNet, init_model, smooth_images


def batches(n_batches=4, bs=8, size=16, seed=0):
    x = smooth_images(n_batches * bs, size, seed)
    return list(x.split(bs))


def rel_err(model, ref, x):
    with torch.no_grad():
        a, b = model(x), ref(x)
    return float((a - b).norm() / b.norm())


def qlayers(model):
    return {n: m for n, m in model.named_modules()
            if isinstance(m, QuantizedLayer)}


@pytest.fixture(scope='module')
def tiny():
    return init_model(TinyNet())


def test_w8a8_close_to_float_and_integers_in_range(tiny):
    cfg = QuantConfig(w_bits=8, a_bits=8, rows_per_layer=4096)
    qmodel, report = mmquant.quantize(tiny, batches(), cfg)
    layers = qlayers(qmodel)
    assert set(layers) == {'stem', 'dw', 'grouped', 'same', 'pw', 'head'}
    for name, layer in layers.items():
        assert layer.qweight.dtype == torch.int8
        assert int(layer.qweight.abs().max()) <= qmax(layer.w_bits)
        assert torch.isfinite(layer.weight_scale).all()
    # the original model is untouched
    assert not qlayers(tiny)
    assert rel_err(qmodel, tiny, smooth_images(16, seed=1)) < 0.02
    # the first layer keeps a float input, first/last layers are 8-bit
    assert layers['stem'].a_bits is None
    assert layers['head'].w_bits == 8
    # the reused module got statistics from both calls
    same = {r.name: r for r in report.layers}['same']
    assert same.calls == 2
    json.dumps(report.to_dict())


def test_w4a8_bitsplit_beats_rtn(tiny):
    x = smooth_images(32, seed=2)
    data = batches()
    errs = {}
    for method in ('rtn', 'bitsplit'):
        cfg = QuantConfig(w_bits=4, a_bits=8, method=method,
                          first_last_bits=None)
        qmodel, report = mmquant.quantize(tiny, data, cfg)
        errs[method] = rel_err(qmodel, tiny, x)
        assert report.mode == ('rtn' if method == 'rtn'
                               else 'error_compensated')
    assert errs['bitsplit'] < errs['rtn']
    # the solver improves every layer over its RTN initialisation
    for lay in report.quantized_layers:
        assert lay.objective <= lay.objective_rtn * (1 + 1e-6), lay.name


def test_error_compensation_beats_fast_mode():
    model = init_model(DeepNet(depth=6), seed=3)
    data = batches(4, 8, 12, seed=4)
    x = smooth_images(32, 12, seed=5)
    errs = {}
    for ec in (False, True):
        cfg = QuantConfig(w_bits=3, a_bits=4, error_compensation=ec,
                          first_last_bits=None)
        qmodel, _ = mmquant.quantize(model, data, cfg)
        errs[ec] = rel_err(qmodel, model, x)
    assert errs[True] < errs[False], errs


def test_overrides_and_skip(tiny):
    cfg = QuantConfig(w_bits=4, a_bits=None, overrides={'g*': dict(
        w_bits=2)}, skip=['pw'], error_compensation=False)
    qmodel, report = mmquant.quantize(tiny, batches(2), cfg)
    layers = qlayers(qmodel)
    assert 'pw' not in layers and isinstance(qmodel.pw, nn.Conv2d)
    assert layers['grouped'].w_bits == 2
    assert layers['dw'].w_bits == 4
    assert all(lay.a_bits is None for lay in layers.values())
    notes = {r.name: r.note for r in report.layers}
    assert 'skipped' in notes['pw']


def test_quantized_model_attributes_read_through(tiny):
    qmodel, _ = mmquant.quantize(tiny, batches(1), QuantConfig(
        error_compensation=False))
    assert qmodel.head.out_features == 10
    assert qmodel.dw.groups == 16
    assert torch.equal(qmodel.dw.weight,
                       qmodel.dw.qweight.float() *
                       qmodel.dw.weight_scale.view(-1, 1, 1, 1))


def test_forward_fn_for_dict_batches(tiny):
    data = [dict(images=x) for x in batches(2)]
    qmodel, _ = mmquant.quantize(
        tiny, data, QuantConfig(w_bits=8, error_compensation=False),
        forward_fn=lambda m, b: m(b['images']))
    assert len(qlayers(qmodel)) == 6


def test_calib_samples_limits_batches(tiny):
    _, report = mmquant.quantize(tiny, batches(4, 8), QuantConfig(
        calib_samples=12, error_compensation=False))
    assert report.calib_samples == 16  # two whole batches of 8


@pytest.mark.parametrize('bad, error, match', [
    (dict(model=nn.Sequential(nn.ReLU())), ValueError,
     'has no nn.Conv2d, nn.Conv1d, nn.ConvTranspose2d, nn.Linear or '
     'nn.MultiheadAttention layer'),
    (dict(data=[]), ValueError, 'calib_data is empty'),
    (dict(data=[torch.zeros(2, 3, 8, 8), (torch.zeros(2, 3, 8, 8), )]),
     TypeError, 'one type'),
    (dict(config=dict(skip=['nope.*'])), ValueError,
     "skip pattern 'nope.\\*' matches no"),
    (dict(config=dict(overrides={'x': dict(w_bits=9)})), ValueError,
     'w_bits must be an integer in 2..8'),
    (dict(config=dict(w_bit=4)), ValueError,
     "unknown quantizer config key.*'w_bit' \\(did you mean 'w_bits'"),
    (dict(config=dict(a_bits=1)), ValueError, 'a_bits must be'),
    (dict(config=dict(schedule='plane')), ValueError,
     "schedule must be one of 'integer', 'paper', 'canonical-planes', "
     "'canonical-planes\\+integer', got 'plane'"),
    (dict(config=dict(schedule='planes')), ValueError,
     "schedule 'planes' was renamed 'canonical-planes'.*schedule='paper'"),
    (dict(config=dict(refine_integer=False)), ValueError,
     "'refine_integer' \\(replaced by schedule: refine_integer=True was "
     "schedule='canonical-planes\\+integer', False was "
     "schedule='canonical-planes'\\)"),
])
def test_bad_input(tiny, bad, error, match):
    with pytest.raises(error, match=match):
        mmquant.quantize(bad.get('model', tiny),
                         bad.get('data', batches(1)),
                         bad.get('config', None))


def test_bn_reestimation_matches_quantized_batch_statistics():
    model = init_model(TinyNet(), seed=5)
    data = batches(2, 8)
    qmodel, report = mmquant.quantize(
        model, data, QuantConfig(w_bits=3, a_bits=None, bn_reestimation=True,
                                 error_compensation=False))
    assert report.timing['bn'] > 0
    # the BN follows the stem: its new running mean is the mean of the
    # quantized stem's outputs over the calibration batches
    with torch.no_grad():
        outs = torch.cat([qmodel.stem(x) for x in data])
    expected = outs.mean(dim=(0, 2, 3))
    assert torch.allclose(qmodel.bn.running_mean, expected, atol=1e-5)
    assert not torch.allclose(model.bn.running_mean, expected, atol=1e-3)
    assert not qmodel.bn.training and qmodel.bn.momentum == 0.1


@pytest.mark.parametrize('ec', [False, True])
def test_output_method_rtn_rounds_only_the_output_layers(tiny, ec):
    """``output_method='rtn'`` gives the output layer (the head) exactly
    the weight-only MSE rounding of an RTN run; the other layers keep
    their BitSplit solution."""
    data = batches()
    common = dict(w_bits=3, a_bits=8, error_compensation=ec)
    ref, _ = mmquant.quantize(tiny, data, QuantConfig(**common))
    rtn, _ = mmquant.quantize(tiny, data,
                              QuantConfig(method='rtn', **common))
    out, report = mmquant.quantize(
        tiny, data, QuantConfig(output_method='rtn', **common))
    rows = {r.name: r for r in report.layers}
    assert rows['head'].role == 'output'
    assert rows['head'].rounds == 0
    # the same integers; the objective uses the stored float32 scales
    assert rows['head'].objective == pytest.approx(
        rows['head'].objective_rtn, rel=1e-5)
    assert 'weight-only' in rows['head'].note
    q_out, q_ref, q_rtn = qlayers(out), qlayers(ref), qlayers(rtn)
    assert torch.equal(q_out['head'].qweight, q_rtn['head'].qweight)
    assert torch.equal(q_out['head'].weight_scale,
                       q_rtn['head'].weight_scale)
    assert not torch.equal(q_ref['head'].qweight, q_rtn['head'].qweight)
    # the layers before the head are those of the reference run
    for name in ('stem', 'dw', 'grouped', 'same', 'pw'):
        assert torch.equal(q_out[name].qweight, q_ref[name].qweight), name
        assert rows[name].rounds > 0 and rows[name].note == '', name


@pytest.mark.parametrize('cfg, match', [
    (dict(output_method='gptq'), "output_method must be one of"),
    (dict(method='rtn', output_method='bitsplit'),
     "output_method='bitsplit' needs method='bitsplit'"),
    (dict(damping_scales_with_rows=1), 'damping_scales_with_rows must be '
     'True or False'),
])
def test_bad_ablation_options(cfg, match):
    with pytest.raises((ValueError, TypeError), match=match):
        QuantConfig(**cfg)


@pytest.mark.parametrize('scales_with_rows, factor',
                         [(True, 4.0), (False, 1.0)])
def test_ridge_strength(scales_with_rows, factor):
    """``lam = damping * mean(diag A)``, times ``N / rows`` when the layer
    saw fewer rows than it has inputs (here 8 rows, N = 32)."""
    from mmquant.core.stats import LayerGeometry, StatsAccumulator
    from mmquant.quantization.methods import damp as _damp
    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(32, 4)
    acc = StatsAccumulator(LayerGeometry.from_module(layer))
    x = torch.randn(8, 32, generator=gen)
    acc.update(x, layer(x).detach() - layer.bias.detach())
    A0 = acc.A.clone()
    mean_diag = float(torch.diagonal(A0[0]).mean())
    ridge = _damp(acc, layer.weight.detach(), 0.1, scales_with_rows)
    lam = 0.1 * factor * mean_diag
    assert torch.allclose(acc.A[0] - A0[0],
                          lam * torch.eye(32, dtype=torch.float64))
    q = torch.zeros(4, 32)
    w2 = float((layer.weight.detach().double()**2).sum())
    assert ridge(q, torch.ones(4)) == pytest.approx(lam * w2, rel=1e-12)
