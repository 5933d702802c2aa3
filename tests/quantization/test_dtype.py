"""mmquant.quantize on float64, bfloat16 and float16 models.

The statistics are float64 whatever the model's dtype; the swapped layers
keep float32 scales (the stored format) and compute in the model's dtype.
Values are compared exactly only where no float kernel is involved: the
weights are ``qweight * weight_scale`` (exact in float64) rounded once to
the dtype, the round trip through a file copies tensors, and RTN integers
depend on the weights alone.
"""
import pytest
import torch

import mmquant
from mmquant import QuantConfig
from mmquant.checkpoint import load_quantized, save_quantized
from mmquant.core.grid import qmax
from mmquant.nn import QuantizedLayer

from .models import TinyNet, init_model, smooth_images

DTYPES = (torch.float64, torch.bfloat16, torch.float16)
LAYERS = {'stem', 'dw', 'grouped', 'same', 'pw', 'head'}


def qlayers(model):
    return {n: m for n, m in model.named_modules()
            if isinstance(m, QuantizedLayer)}


def data(dtype, n_batches=2, bs=4):
    return list(smooth_images(n_batches * bs, 16, 0).to(dtype).split(bs))


def exact_weight(layer, dtype):
    """``qweight * weight_scale`` in float64 (exact), rounded to dtype."""
    q = layer.qweight.to(torch.float64)
    s = layer.weight_scale.to(torch.float64)
    return (q * s.reshape((-1, ) + (1, ) * (q.dim() - 1))).to(dtype)


def check_layers(model, dtype):
    layers = qlayers(model)
    assert set(layers) == LAYERS
    for layer in layers.values():
        assert layer.compute_dtype == dtype
        assert layer.qweight.dtype == torch.int8
        assert int(layer.qweight.abs().max()) <= qmax(layer.w_bits)
        assert layer.weight_scale.dtype == torch.float32
        assert layer.act_scale.dtype == torch.float32
        assert layer.weight.dtype == dtype
        assert torch.equal(layer.weight, exact_weight(layer, dtype))
        if layer.bias is not None:
            assert layer.bias.dtype == dtype


@pytest.mark.parametrize('ec', [False, True], ids=['fast', 'ec'])
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_quantize_save_load_in_model_dtype(dtype, ec, tmp_path):
    model = init_model(TinyNet()).to(dtype)
    cfg = QuantConfig(w_bits=4, a_bits=8, error_compensation=ec,
                      rows_per_layer=512)
    qmodel, report = mmquant.quantize(model, data(dtype), cfg)
    assert report.mode == ('error_compensated' if ec else 'fast')
    check_layers(qmodel, dtype)
    assert qlayers(qmodel)['dw'].a_bits == 8
    x = smooth_images(4, 16, 1).to(dtype)
    with torch.no_grad():
        out = qmodel(x)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()

    path = str(tmp_path / 'q.pth')
    save_quantized(qmodel, path)
    fresh = load_quantized(init_model(TinyNet(), seed=1).to(dtype), path)
    check_layers(fresh, dtype)
    expected = qmodel.state_dict()
    loaded = fresh.state_dict()
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key
    for name, layer in qlayers(qmodel).items():
        assert torch.equal(qlayers(fresh)[name].weight, layer.weight)
    with torch.no_grad():
        assert torch.equal(fresh(x), out)


def test_recorded_dtype_wins_over_the_model(tmp_path):
    """A bfloat16 file loaded into a float32 model: the quantized layers
    compute in bfloat16 again, with bit-identical weights and biases."""
    qmodel, _ = mmquant.quantize(
        init_model(TinyNet()).to(torch.bfloat16), data(torch.bfloat16),
        QuantConfig(w_bits=4, a_bits=8, error_compensation=False,
                    rows_per_layer=512))
    path = str(tmp_path / 'q.pth')
    save_quantized(qmodel, path)
    fresh = load_quantized(init_model(TinyNet(), seed=1), path)
    check_layers(fresh, torch.bfloat16)
    for name, layer in qlayers(qmodel).items():
        new = qlayers(fresh)[name]
        assert torch.equal(new.weight, layer.weight)
        assert torch.equal(new.qweight, layer.qweight)
        assert torch.equal(new.weight_scale, layer.weight_scale)
        if layer.bias is not None:
            assert torch.equal(new.bias, layer.bias)


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_rtn_integers_do_not_depend_on_the_dtype(dtype):
    """RTN depends on the weights alone (solved in float64), so a model in
    ``dtype`` and the float32 model of the same (rounded) weights get the
    same integers and scales."""
    low = init_model(TinyNet()).to(dtype)
    ref = init_model(TinyNet()).to(dtype).to(torch.float32)
    cfg = QuantConfig(w_bits=4, a_bits=None, method='rtn')
    q_low, _ = mmquant.quantize(low, data(dtype), cfg)
    q_ref, _ = mmquant.quantize(ref, data(torch.float32), cfg)
    check_layers(q_low, dtype)
    check_layers(q_ref, torch.float32)
    for name, layer in qlayers(q_ref).items():
        other = qlayers(q_low)[name]
        assert torch.equal(other.qweight, layer.qweight), name
        assert torch.equal(other.weight_scale, layer.weight_scale), name
        if layer.bias is not None:
            assert torch.equal(other.bias, layer.bias.to(dtype)), name


def test_to_dtype_after_quantization_keeps_float32_scales():
    qmodel, _ = mmquant.quantize(
        init_model(TinyNet()).to(torch.bfloat16), data(torch.bfloat16),
        QuantConfig(w_bits=4, a_bits=8, error_compensation=False,
                    rows_per_layer=512))
    scales = {n: (m.weight_scale.clone(), m.act_scale.clone())
              for n, m in qlayers(qmodel).items()}
    for dtype in (torch.float64, torch.float16, torch.float32):
        qmodel.to(dtype)
        check_layers(qmodel, dtype)
        for name, layer in qlayers(qmodel).items():
            assert torch.equal(layer.weight_scale, scales[name][0])
            assert torch.equal(layer.act_scale, scales[name][1])
        with torch.no_grad():
            assert qmodel(smooth_images(2, 16, 1).to(dtype)).dtype == dtype
