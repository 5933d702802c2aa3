"""mmpretrain classifiers through ``run_ptq`` (the path of tools/ptq.py).

Tiny ResNet-18 (8 channels) and MobileNetV2 x0.25 (depthwise convs) on a
32x32 folder dataset: W4A8 end to end, W8A8 against float, error
compensation against the fast mode at W3A4, and bit-exact INT reload.
"""
import json
import math
import os.path as osp

import pytest
import torch
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

import mmquant
from mmquant import QuantConfig
from mmquant.apis.calibration import preprocess_batches
from mmquant.apis.ptq import build_float_model
from mmquant.checkpoint import inspect_quantized
from mmquant.core.grid import qmax

from .conftest import quantized_layers, rel_error, tensors_of

KINDS = ['resnet', 'mobilenet']


def held_out(run, model):
    """The val images (never used for calibration), preprocessed."""
    init_default_scope('mmpretrain')
    return preprocess_batches(
        model, Runner.build_dataloader(run.cfg.test_dataloader))


def logits(model, batches):
    with torch.no_grad():
        return torch.cat([model(b['inputs'], mode='tensor')
                          for b in batches])


@pytest.mark.parametrize('kind', KINDS)
def test_w4a8_end_to_end(ws, kind):
    run = ws.ptq(kind)
    rep = run.report
    # files: the INT checkpoint and report.json, which is the report
    assert osp.basename(run.int_path) == 'model_w4a8_int.pth'
    assert osp.isfile(run.int_path)
    with open(osp.join(run.work_dir, 'report.json')) as f:
        on_disk = json.load(f)
    assert on_disk == json.loads(json.dumps(rep))
    assert rep['mode'] == 'error_compensated'
    assert rep['config']['w_bits'] == 4 and rep['config']['a_bits'] == 8

    # every Conv2d/Linear quantized, with its bits, objective, error, time
    layers = rep['layers']
    assert rep['summary'] == dict(quantized_layers=len(layers),
                                  float_layers=0)
    qlayers = quantized_layers(run.qmodel)
    assert [lay['name'] for lay in layers] == list(qlayers)
    first, last = layers[0], layers[-1]
    assert first['name'] == 'backbone.conv1' + (
        '.conv' if kind == 'mobilenet' else '')
    assert (first['w_bits'], first['a_bits']) == (8, None)  # input float
    assert last['name'] == 'head.fc'
    assert (last['w_bits'], last['a_bits']) == (8, 8)
    assert (first['role'], last['role']) == ('input', 'output')
    for lay in layers[1:-1]:
        assert (lay['w_bits'], lay['a_bits'], lay['role']) == (4, 8, None)
    for lay in layers:
        assert lay['rows'] > 0 and lay['rounds'] >= 1
        assert lay['time_s'] >= 0
        for key in ('objective', 'objective_rtn', 'rel_error',
                    'rel_error_rtn'):
            assert math.isfinite(lay[key]), (lay['name'], key)
        # the solver starts from RTN and never ends worse
        assert lay['objective'] <= lay['objective_rtn'] * (1 + 1e-6) + 1e-9
        assert lay['rel_error'] < 1.0
        if lay['a_bits'] is not None:
            assert lay['act_scale'] > 0
    assert rep['timing']['total'] > 0 and rep['calib_samples'] == 16

    # metrics of both models from the config's Accuracy evaluator
    for which in ('float', 'quantized'):
        top1 = run.metrics[which]['accuracy/top1']
        assert 0.0 <= top1 <= 100.0
    # a trained 3-class model keeps most of its accuracy at W4A8
    assert run.metrics['quantized']['accuracy/top1'] >= \
        run.metrics['float']['accuracy/top1'] - 25.0

    # the quantized layers hold integers in range, also in the file
    for name, layer in qlayers.items():
        assert layer.qweight.dtype == torch.int8
        bits = layer.w_bits
        assert int(layer.qweight.abs().max()) <= qmax(bits), name
        assert bool((layer.weight_scale > 0).all()), name
        torch.testing.assert_close(
            layer.layer.weight,
            layer.qweight.float() * layer.weight_scale.view(
                -1, *[1] * (layer.qweight.dim() - 1)))
    info = inspect_quantized(run.int_path)
    assert {lay['name']: lay['w_bits'] for lay in info['layers']} == \
        {n: m.w_bits for n, m in qlayers.items()}
    if kind == 'mobilenet':
        depthwise = [n for n, m in qlayers.items()
                     if getattr(m, 'groups', 1) > 1
                     and m.groups == m.in_channels]
        assert len(depthwise) == 17  # one per inverted residual block


def test_w8a8_close_to_float_resnet(ws):
    run = ws.ptq('resnet', w_bits=8)
    # same top-1 on the 24 val images
    assert run.metrics['quantized']['accuracy/top1'] == \
        run.metrics['float']['accuracy/top1']
    float_model = build_float_model(run.cfg, run.ckpt)
    batches = held_out(run, float_model)
    ref = logits(float_model, batches)
    err = rel_error(logits(run.qmodel, batches), ref)
    # 8-bit weights alone (--no-act-quant) are within 1% of float; the
    # per-tensor 8-bit activations of this 12-step-trained net add about
    # 1% (measured 0.0021 and 0.0120 under ATEN_CPU_CAPABILITY=default,
    # 0.0021 and 0.0119 under avx2/avx512: the model is trained in
    # float64, the same on every CPU).
    w8 = ws.ptq('resnet', w_bits=8, a_bits=None, do_eval=False)
    err_w8 = rel_error(logits(w8.qmodel, batches), ref)
    assert err_w8 < 0.01, err_w8
    assert err < 0.10, err


def test_w8a8_close_to_float_mobilenet(ws):
    run = ws.ptq('mobilenet', w_bits=8)
    f1 = run.metrics['float']['accuracy/top1']
    q1 = run.metrics['quantized']['accuracy/top1']
    assert f1 > 40  # trained: better than chance (33%); measured 83.3
    # at most 2 of the 24 val images change their top-1 (measured: none
    # under ATEN_CPU_CAPABILITY=default, avx2 and avx512)
    assert abs(q1 - f1) <= 2 * 100 / 24 + 1e-4, (f1, q1)
    float_model = build_float_model(run.cfg, run.ckpt)
    batches = held_out(run, float_model)
    ref = logits(float_model, batches)
    err8 = rel_error(logits(run.qmodel, batches), ref)
    err4 = rel_error(logits(ws.ptq(
        'mobilenet', error_compensation=False).qmodel, batches), ref)
    # This MobileNetV2 x0.25 (32 px, 53 layers, few residuals) is very
    # sensitive: scaling its first conv's weights by 1.003 alone moves its
    # logits by 4% (measured), and each of its 53 layers adds such an
    # error at 8 bits, so its W8A8 logits cannot be within a few % of
    # float; they are far closer than the W4A8 ones. Measured on the
    # committed weights (tests/openmmlab/data, the same on every machine):
    # err8 0.177 (ATEN_CPU_CAPABILITY=default) / 0.175 (avx2, avx512); the
    # reference is fast-mode W4A8, 0.559 / 0.560. Error-compensated W4A8 is
    # no reference here: its 53 chained solves amplify the kernels'
    # last-bit differences (0.399 default vs 0.566 avx2/avx512).
    assert err8 < 0.3 and err8 < 0.5 * err4, (err8, err4)


def test_error_compensation_beats_fast_mode(ws):
    """At W3A4, solving each layer on the already-quantized network's
    inputs (Algorithm 1) ends closer to the float outputs on held-out
    images than one float pass for all layers."""
    # calibration on all 30 training images: with 16, fast mode won on
    # one of six training seeds (measured, seeds 0-5: EC/fast error ratio
    # 0.55-1.09 with 16 images, 0.40-0.92 with 30)
    ec = ws.ptq('resnet', calib_samples=30, w_bits=3, a_bits=4,
                do_eval=False)
    fast = ws.ptq('resnet', calib_samples=30, w_bits=3, a_bits=4,
                  do_eval=False, error_compensation=False)
    assert ec.report['mode'] == 'error_compensated'
    assert fast.report['mode'] == 'fast'
    assert ec.metrics == {} and fast.metrics == {}
    float_model = build_float_model(ec.cfg, ec.ckpt)
    batches = held_out(ec, float_model)
    ref = logits(float_model, batches)
    err_ec = rel_error(logits(ec.qmodel, batches), ref)
    err_fast = rel_error(logits(fast.qmodel, batches), ref)
    # measured 0.0799 vs 0.1007 under ATEN_CPU_CAPABILITY=default, avx2
    # and avx512 (the float64-trained model is the same on every CPU; the
    # kernels move these errors by ~1e-7)
    assert err_ec < 0.9 * err_fast, (err_ec, err_fast)


def test_int_reload_bit_exact(ws):
    run = ws.ptq('resnet')
    init_default_scope('mmpretrain')
    from mmquant.models import QuantizedModel
    reloaded = QuantizedModel(architecture=run.cfg.model,
                              int_checkpoint=run.int_path).eval()
    assert list(quantized_layers(reloaded.architecture)) == \
        list(quantized_layers(run.qmodel))
    batches = held_out(run, reloaded)
    with torch.no_grad():
        for b in batches:
            a = reloaded(b['inputs'], b['data_samples'], mode='tensor')
            r = run.qmodel(b['inputs'], b['data_samples'], mode='tensor')
            assert all(torch.equal(x, y)
                       for x, y in zip(tensors_of(a), tensors_of(r)))


def test_underdetermined_layer_generalizes_like_rtn():
    """Fewer calibration rows (16) than inputs (240): the ridge towards the
    float weights (``damping``) keeps BitSplit from fitting the calibration
    rows; without it held-out error was 0.147 against RTN's 0.066."""
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(240, 40, bias=False))
    basis = torch.randn(240, 24)
    gen = torch.Generator().manual_seed(1)

    def data(n):
        return torch.relu(
            torch.randn(n, 24, generator=gen) @ basis.T / 5 - 0.5)

    calib, test = [data(16)], data(2000)
    errs = {}
    for method in ('bitsplit', 'rtn'):
        q, _ = mmquant.quantize(
            lin, calib,
            QuantConfig(w_bits=4, a_bits=None, first_last_bits=None,
                        method=method, rows_per_layer=None),
            logger=lambda msg: None)
        with torch.no_grad():
            errs[method] = float((q(test) - lin(test)).norm() /
                                 lin(test).norm())
    assert errs['bitsplit'] <= 1.1 * errs['rtn'], errs
