"""The stock-config test matrix of issue 21.

For each stock mmpretrain/mmdet config of the matrix (``configs/``, the
installed package's config with only the dataset, class count, image size
and batch sizes changed):

* the float model that ``tools/ptq.py`` builds gives the same
  preprocessed inputs and ``mode='tensor'`` outputs, bit for bit, as the
  model mmengine's ``Runner`` builds from the same config with the same
  checkpoint, and its inputs are normalised with the config's mean, std
  and channel order (a dropped top-level ``data_preprocessor`` fails
  here);
* ``tools/ptq.py`` runs, with evaluation, on the tiny data;
* ``tools/test.py`` reproduces the INT file's metrics exactly;
* the report accounts for every weight-bearing module: quantized, or left
  float with a note saying why;
* mixed precision (``--target-bits``) runs through the stock RetinaNet
  and ``tools/test.py`` reproduces its metrics.
"""
import copy
import json
import math
import os.path as osp
import sys

import pytest
import torch
from mmengine.runner import load_checkpoint

from mmquant.apis.ptq import build_float_model

from ..conftest import tensors_of
from .conftest import CALIB_SAMPLES, MATRIX, float_weights, first_batch, \
    load_tool

MODELS = list(MATRIX)


def _normalisation(cfg):
    """``(mean, std, flip channels)`` of the config's preprocessor (the
    model's own, else the top-level one, as the Runner picks it)."""
    pre = cfg.model.get('data_preprocessor') or cfg.data_preprocessor
    flip = pre.get('to_rgb', False) or pre.get('bgr_to_rgb', False)
    return (torch.tensor(pre['mean']).view(-1, 1, 1),
            torch.tensor(pre['std']).view(-1, 1, 1), flip)


@pytest.mark.parametrize('model', MODELS)
def test_float_model_matches_runner(stock, model):
    cfg = stock.cfg(model)
    ckpt = stock.float_ckpt(model)
    # the model mmengine's Runner builds, with the checkpoint loaded by
    # mmengine's loader (Runner.load_checkpoint itself needs the hooks
    # set up by a run: EMAHook's ema_model)
    reference = stock.runner(model).model
    load_checkpoint(reference, ckpt, strict=True)
    reference.eval()
    ours = build_float_model(cfg, ckpt)
    assert type(ours.data_preprocessor) is type(reference.data_preprocessor)

    batch = first_batch(cfg)
    ref_data = reference.data_preprocessor(copy.deepcopy(batch), False)
    our_data = ours.data_preprocessor(copy.deepcopy(batch), False)
    # same preprocessor, same ops: bit-exact
    assert torch.equal(our_data['inputs'], ref_data['inputs'])

    # normalised with the config's mean/std and channel order, not raw
    # pixels: (x - mean) / std in float32 is the preprocessor's own
    # computation (IEEE subtraction and division round exactly), so
    # compare bit-exact on each image's unpadded area
    mean, std, flip = _normalisation(cfg)
    for i, img in enumerate(batch['inputs']):
        raw = img.float()
        if flip:
            raw = raw[[2, 1, 0]]
        h, w = raw.shape[-2:]
        expected = (raw - mean) / std
        got = our_data['inputs'][i, :, :h, :w]
        assert torch.equal(got, expected), i
        assert not torch.equal(got, img.float()), i

    with torch.no_grad():
        ref_out = reference(ref_data['inputs'], ref_data['data_samples'],
                            mode='tensor')
        our_out = ours(our_data['inputs'], our_data['data_samples'],
                       mode='tensor')
    ref_t, our_t = tensors_of(ref_out), tensors_of(our_out)
    assert len(our_t) == len(ref_t) > 0
    for k, (a, b) in enumerate(zip(our_t, ref_t)):
        assert torch.equal(a, b), k


@pytest.mark.parametrize('model', MODELS)
def test_ptq_runs(stock, model):
    cfg = stock.cfg(model)
    report = stock.ptq(model)
    ec = cfg.quantizer.get('error_compensation', True)
    assert report['mode'] == ('error_compensated' if ec else 'fast')
    if ec:  # the stock backbone's first layers came from the one pass
        assert report['replay']['one_pass'] > 0, report['replay']
        assert report['layers'][0]['replay_from'] == '<one pass>'
    assert report['calib_samples'] == CALIB_SAMPLES
    assert report['summary']['quantized_layers'] > 0
    int_path = report['extra']['int_checkpoint']
    assert osp.isfile(int_path)
    assert osp.basename(int_path) == \
        f'{osp.splitext(MATRIX[model][1])[0]}_w4a8_int.pth'
    metrics = report['extra']['metrics']
    assert set(metrics) == {'float', 'quantized'}
    assert set(metrics['float']) == set(metrics['quantized'])
    assert metrics['float']
    for which in ('float', 'quantized'):
        for key, value in metrics[which].items():
            assert math.isfinite(value), (which, key)
    for lay in report['layers']:
        if lay['w_bits'] is not None:
            assert lay['rows'] > 0 and math.isfinite(lay['objective']), \
                lay['name']


@pytest.mark.parametrize('model', MODELS)
def test_tools_test_reproduces_int_metrics(stock, model, tmp_path):
    report = stock.ptq(model)
    expected = report['extra']['metrics']['quantized']
    metrics = load_tool('test').main([
        stock.config_path(model), report['extra']['int_checkpoint'],
        '--work-dir', str(tmp_path), '--cfg-options',
        *stock.options(model)])
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert float(metrics[key]) == value, key


@pytest.mark.parametrize('model', MODELS)
def test_report_accounts_for_every_weight(stock, model):
    report = stock.ptq(model)
    float_model = build_float_model(stock.cfg(model))
    weights = float_weights(float_model)
    assert weights
    layers = {lay['name']: lay for lay in report['layers']}
    missing = sorted(
        f'{name} ({type(float_model.get_submodule(name)).__name__}: '
        f'{", ".join(params)})'
        for name, params in weights.items() if name not in layers)
    unexplained = sorted(name for name, lay in layers.items()
                         if lay['w_bits'] is None and not lay['note'])
    assert not missing, f'{len(missing)} weight-bearing modules not in ' \
        f'the report: {missing[:8]}'
    assert not unexplained, unexplained
    # nothing the model does not have
    assert set(layers) <= set(dict(float_model.named_modules()))


def test_deit_batch_augments(stock):
    """DeiT's ``train_cfg.augments`` (Mixup, CutMix) reach the Runner's
    preprocessor with the config's class count; PTQ ran through it."""
    cfg = stock.cfg('deit_tiny')
    assert [a['type'] for a in cfg.model.train_cfg.augments] == \
        ['Mixup', 'CutMix']
    model = build_float_model(cfg)
    pre = model.data_preprocessor
    assert pre.num_classes == 3
    assert pre.batch_augments is not None
    # a training batch is mixed into one-hot scores of 3 classes
    batch = first_batch(cfg, count=4)
    torch.manual_seed(0)
    data = pre(copy.deepcopy(batch), True)
    scores = torch.stack([s.gt_score for s in data['data_samples']])
    assert scores.shape == (4, 3)
    assert torch.allclose(scores.sum(1), torch.ones(4))
    assert stock.ptq('deit_tiny')['summary']['quantized_layers'] > 0


def test_mixed_precision_on_stock_retinanet(stock, tmp_path):
    """``--target-bits`` through the stock RetinaNet config (a detector
    whose outputs are ten tensors: class scores and box deltas per
    level): the network probe runs on the calibration images, the widths
    fit the budget, and stock ``tools/test.py`` reproduces the INT file's
    metrics exactly."""
    model = 'retinanet'
    work_dir = str(tmp_path / 'ptq')
    argv = [osp.join('tools', 'ptq.py'), stock.config_path(model),
            stock.float_ckpt(model), '--work-dir', work_dir,
            '--calib-samples', str(CALIB_SAMPLES), '--fast',
            '--target-bits', '3.5', '--cfg-options', *stock.options(model)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, 'argv', argv)
        assert load_tool('ptq').main() == 0
    with open(osp.join(work_dir, 'latest', 'report.json')) as f:
        report = json.load(f)
    mixed = report['extra']['mixed_precision']
    assert report['mode'] == 'fast'
    assert mixed['metric'] == 'network'
    assert mixed['probe_samples'] == CALIB_SAMPLES
    assert mixed['average_bits'] <= 3.5
    assert len(set(mixed['bits'].values())) > 1  # really mixed
    layers = {lay['name']: lay for lay in report['layers']}
    for name, bits in mixed['bits'].items():
        assert layers[name]['w_bits'] == bits
        change = layers[name]['network_sensitivity']
        assert sorted(change) == ['2', '3', '4', '8']
        assert all(math.isfinite(v) and v >= 0 for v in change.values())
    for name in mixed['fixed']:
        assert layers[name]['network_sensitivity'] is None
    expected = report['extra']['metrics']['quantized']
    metrics = load_tool('test').main([
        stock.config_path(model), report['extra']['int_checkpoint'],
        '--work-dir', str(tmp_path / 'test'), '--cfg-options',
        *stock.options(model)])
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert float(metrics[key]) == value, key
