"""Tests for saving, loading and inspecting whole quantized models.

Covers :mod:`mmquant.checkpoint.int_model`, ``.layer_records``,
``.inspection`` and ``tools/inspect_checkpoint.py``.
"""
import hashlib
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmquant.checkpoint import (CheckpointError, CheckpointMismatchError,
                                CheckpointNotFoundError, inspect_quantized,
                                load_container, load_quantized,
                                pack_int, packed_nbytes, save_container,
                                save_quantized)
from mmquant.nn import QuantizedLayer

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'inspect_checkpoint.py')

# name -> (w_bits, a_bits, act_signed); 'keep' stays float.
MIXED = {
    'stem.0': (8, None, False),
    'dw': (3, 8, True),
    'group': (2, 4, False),
    'pad': (4, None, False),
    'head': (4, 8, True),
}
ORDER = ['stem.0', 'dw', 'group', 'pad', 'head']
CALLER_META = {
    'quantizer': {'type': 'BitSplit', 'w_bits': 4, 'layers': ['dw']},
    'source_config': "model = dict(type='Net')\n",
    'float_checkpoint': 'net_float.pth',
    'float_checkpoint_sha256': 'ab' * 32,
}
# File bytes beyond the raw tensor data and the meta JSON (zip headers,
# 64-byte data alignment, pickle, checksums), measured with torch 2.9: an
# empty container takes 1517 bytes (its meta JSON, the tensor-name digest,
# takes 85 of them); the mixed Net files (31 tensors, names
# of ~15 characters) take 1453 + ~320 bytes per tensor.  Asserted with a
# margin.
BASE_OVERHEAD = 2048
PER_TENSOR_OVERHEAD = 400


class PadConv(nn.Conv2d):
    """A conv that pads asymmetrically inside ``forward`` (TF 'same')."""

    def forward(self, x):
        return super().forward(F.pad(x, (0, 1, 0, 1)))


class Net(nn.Module):
    """A small CNN: depthwise, grouped and padding convs, BN, linear."""

    def __init__(self, width=8):
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.dw = nn.Conv2d(w, w, 3, padding=1, groups=w, bias=False)
        self.bn = nn.BatchNorm2d(w)
        self.group = nn.Conv2d(w, 2 * w, 1, groups=4)
        self.pad = PadConv(2 * w, 2 * w, 2)
        self.keep = nn.Conv2d(2 * w, 2 * w, 1)
        self.head = nn.Linear(2 * w, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.bn(self.dw(x)))
        x = F.relu(self.group(x))
        x = self.keep(self.pad(x))
        return self.head(x.mean((2, 3)))


def build(seed, width=8):
    """A float Net with random weights and BN statistics, in eval mode."""
    torch.manual_seed(seed)
    model = Net(width)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
            m.num_batches_tracked.fill_(int(torch.randint(1, 100, ())))
    return model.eval()


def _set(model, name, new):
    parent, _, child = name.rpartition('.')
    setattr(model.get_submodule(parent) if parent else model, child, new)


def quantize(model, spec, seed=0):
    """Swap the layers of ``spec`` for QuantizedLayers of random ints."""
    gen = torch.Generator().manual_seed(seed)
    for name, (w_bits, a_bits, signed) in spec.items():
        layer = model.get_submodule(name)
        top = 2**(w_bits - 1) - 1
        shape = layer.weight.shape
        q = torch.randint(-top, top + 1, shape, generator=gen,
                          dtype=torch.int8)
        scale = torch.rand(shape[0], generator=gen) * 0.1 + 0.01
        act = None if a_bits is None else 0.05
        ql = QuantizedLayer(layer, q, scale, w_bits, a_bits, act, signed)
        _set(model, name, ql.train(layer.training))
    return model


def _uniform(bits):
    return {name: (bits, None, False) for name in ORDER}


def _rewrite(src, dst, edit):
    """Copy an INT file, letting ``edit(tensors, meta)`` change it."""
    tensors, meta = load_container(src)
    edit(tensors, meta)
    save_container(dst, tensors, meta)
    return dst


def _rename(tensors, meta, old, new):
    for rec in meta['layers']:
        if rec['name'] == old:
            rec['name'] = new
    for key in list(tensors):
        if key.startswith(old + '.'):
            tensors[new + key[len(old):]] = tensors.pop(key)


def _record(meta, name):
    return next(r for r in meta['layers'] if r['name'] == name)


def _snapshot(model):
    return ([(n, type(m)) for n, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()})


def _assert_untouched(model, snap):
    mods, state = _snapshot(model)
    assert mods == snap[0]
    assert list(state) == list(snap[1])
    for k, v in state.items():
        assert torch.equal(v, snap[1][k]), k


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """A mixed-precision quantized Net, its file and size summary."""
    path = str(tmp_path_factory.mktemp('int') / 'mixed.pth')
    model = quantize(build(0), MIXED)
    summary = save_quantized(model, path, CALLER_META)
    return model, path, summary


def _input():
    gen = torch.Generator().manual_seed(5)
    return torch.randn(2, 3, 12, 12, generator=gen)


# ----------------------------------------------------------------- save/load


def test_round_trip_bit_identical(saved):
    model, path, summary = saved
    fresh = build(1)
    x = _input()
    assert not torch.equal(fresh(x), model(x))
    assert load_quantized(fresh, path) is fresh
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    ref, got = model.state_dict(), fresh.state_dict()
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype, k
        assert torch.equal(got[k], ref[k]), k
    for name, (w_bits, a_bits, signed) in MIXED.items():
        layer = fresh.get_submodule(name)
        assert isinstance(layer, QuantizedLayer)
        assert (layer.w_bits, layer.a_bits, layer.act_signed) == (
            w_bits, a_bits, signed)
        assert type(layer.layer) is type(model.get_submodule(name).layer)
        assert not layer.training
        assert torch.equal(layer.layer.weight,
                           model.get_submodule(name).layer.weight)
    assert type(fresh.keep) is nn.Conv2d
    assert summary['layers'] == 5


def test_file_layout(saved):
    model, path, summary = saved
    tensors, meta = load_container(path)
    assert [r['name'] for r in meta['layers']] == ORDER
    for rec in meta['layers']:
        name = rec['name']
        qweight = model.get_submodule(name).qweight
        assert rec == {
            'name': name,
            'w_bits': MIXED[name][0],
            'a_bits': MIXED[name][1],
            'act_signed': MIXED[name][2],
            'shape': list(qweight.shape),
            'numel': qweight.numel(),
            'layer_type': type(model.get_submodule(name).layer).__name__,
            'channels': qweight.shape[0],
        }  # no 'dtype': float32 layers write none (absent = float32)
        packed = tensors[f'{name}.qweight_packed']
        assert packed.dtype == torch.uint8
        assert packed.numel() == packed_nbytes(qweight.numel(), rec['w_bits'])
        assert f'{name}.weight_scale' in tensors
        assert f'{name}.act_scale' in tensors
    assert _record(meta, 'pad')['layer_type'] == 'PadConv'
    assert not [k for k in tensors if k.endswith('.qweight')]
    floats = [k for k in model.state_dict() if not k.endswith('.qweight')]
    assert [k for k in tensors if not k.endswith('_packed')] == floats
    for key, value in CALLER_META.items():
        assert meta[key] == value
    assert meta['mmquant_version'] == __import__('mmquant').__version__
    assert meta['packed_bytes'] == summary['packed_weight_bytes']
    assert meta['float_bytes'] == summary['float_weight_bytes'] == sum(
        4 * model.get_submodule(n).qweight.numel() for n in ORDER)
    assert summary['file_bytes'] == os.path.getsize(path)


def test_load_into_quantized_model(saved):
    model, path, _ = saved
    other = quantize(build(2), _uniform(2), seed=3)
    load_quantized(other, path)
    x = _input()
    with torch.no_grad():
        assert torch.equal(other(x), model(x))
    assert other.dw.w_bits == 3 and other.dw.a_bits == 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_load_keeps_model_device(saved):
    model, path, _ = saved
    fresh = load_quantized(build(1).cuda(), path)
    for key, value in fresh.state_dict().items():
        assert value.is_cuda, key
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x.cuda()).cpu(), model(x))


def test_save_load_save_is_stable(saved, tmp_path):
    _, path, _ = saved
    again = str(tmp_path / 'again.pth')
    save_quantized(load_quantized(build(3), path), again, CALLER_META)
    t1, m1 = load_container(path)
    t2, m2 = load_container(again)
    assert m1 == m2
    assert list(t1) == list(t2)
    assert all(torch.equal(t1[k], t2[k]) for k in t1)
    # Byte-identical (the digest, too, is deterministic).
    with open(path, 'rb') as f1, open(again, 'rb') as f2:
        assert f1.read() == f2.read()


def test_sizes(tmp_path):
    sizes = {}
    for bits in (3, 4):
        model = quantize(build(0, width=64), _uniform(bits))
        path = str(tmp_path / f'w{bits}.pth')
        summary = save_quantized(model, path)
        float_bytes = summary['float_weight_bytes']
        assert float_bytes == 4 * sum(
            model.get_submodule(n).qweight.numel() for n in ORDER)
        tensors, meta = load_container(path)
        other = sum(t.numel() * t.element_size() for k, t in tensors.items()
                    if not k.endswith('_packed'))
        assert summary['other_bytes'] == other
        meta_len = len(json.dumps(meta, separators=(',', ':')))
        allowed = (BASE_OVERHEAD + PER_TENSOR_OVERHEAD * len(tensors) +
                   meta_len)
        overhead = (summary['file_bytes'] - summary['packed_weight_bytes'] -
                    other)
        assert meta_len < overhead <= allowed
        sizes[bits] = summary, allowed
    w4, allowed = sizes[4]
    assert w4['packed_weight_bytes'] <= w4['float_weight_bytes'] / 7
    assert w4['file_bytes'] <= (w4['float_weight_bytes'] / 7 +
                                w4['other_bytes'] + allowed)
    w3 = sizes[3][0]
    assert w3['file_bytes'] < w4['file_bytes']
    assert w3['packed_weight_bytes'] <= (
        w4['packed_weight_bytes'] * 3 / 4 + len(ORDER))


# -------------------------------------------------------------- save errors


def test_save_errors(tmp_path):
    path = str(tmp_path / 'x.pth')
    with pytest.raises(ValueError, match='no QuantizedLayer'):
        save_quantized(build(0), path)
    model = quantize(build(0), {'dw': (4, None, False)})
    with pytest.raises(ValueError, match=r"\['layers', 'packed_bytes'\]"):
        save_quantized(model, path, {'layers': [], 'packed_bytes': 1})
    with pytest.raises(TypeError, match='JSON'):
        save_quantized(model, path, {'scale': torch.ones(1)})
    with pytest.raises(ValueError, match='wrap it'):
        save_quantized(model.dw, path)
    model.shared = model.dw
    with pytest.raises(ValueError, match="'dw' is shared as 'shared'"):
        save_quantized(model, path)
    assert not os.listdir(tmp_path)


# -------------------------------------------------------------- load errors


def _check_error(path, model, exc, *fragments, strict=True):
    snap = _snapshot(model)
    with pytest.raises(exc) as info:
        load_quantized(model, path, strict=strict)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    _assert_untouched(model, snap)
    return info.value


def test_layer_missing_in_model(saved):
    model = build(1)
    del model.group
    _check_error(saved[1], model, CheckpointMismatchError,
                 "layer 'group' of the checkpoint is not in the model")


def test_layer_misnamed_suggests(saved, tmp_path):
    path = _rewrite(saved[1], str(tmp_path / 'r.pth'),
                    lambda t, m: _rename(t, m, 'head', 'heads'))
    _check_error(path, build(1), CheckpointMismatchError,
                 "'heads' of the checkpoint is not in the model",
                 "did you mean 'head'")


def test_layer_not_conv_or_linear(saved):
    model = build(1)
    model.pad = nn.Conv3d(16, 16, 2)
    _check_error(saved[1], model, CheckpointMismatchError,
                 "layer 'pad' is a Conv3d in the model, not an "
                 'nn.Conv2d/Conv1d/ConvTranspose2d/Linear')


def test_layer_type_differs(saved):
    model = build(1)
    model.pad = nn.Conv2d(16, 16, 2)
    _check_error(saved[1], model, CheckpointMismatchError,
                 "layer 'pad' is a Conv2d in the model but a PadConv in the "
                 'checkpoint')
    load_quantized(model, saved[1], strict=False)
    assert type(model.pad.layer) is nn.Conv2d


def test_shape_mismatch(saved):
    err = _check_error(saved[1], build(1, width=16), CheckpointMismatchError,
                       "shape mismatch for layer 'stem.0': the checkpoint "
                       'has [8, 3, 3, 3], the model has [16, 3, 3, 3]')
    # Every layer is reported, not only the first.
    assert "layer 'head'" in str(err)


def test_missing_and_unexpected_keys(saved, tmp_path):

    def edit(tensors, meta):
        del tensors['bn.running_mean']
        del tensors['pad.layer.bias']
        tensors['extra.weight'] = torch.ones(3)

    path = _rewrite(saved[1], str(tmp_path / 'k.pth'), edit)
    model = build(1)
    _check_error(
        path, model, CheckpointMismatchError,
        'Missing key(s) in state_dict: "bn.running_mean", '
        '"pad.layer.bias".', 'Unexpected key(s) in state_dict: '
        '"extra.weight".')
    # Non-strict: extra ignored, missing ones keep the model's values.
    mean = model.bn.running_mean.clone()
    load_quantized(model, path, strict=False)
    assert torch.equal(model.bn.running_mean, mean)
    assert torch.equal(model.dw.qweight, saved[0].dw.qweight)


def test_float_size_mismatch(saved, tmp_path):

    def edit(tensors, meta):
        tensors['keep.bias'] = torch.zeros(5)

    path = _rewrite(saved[1], str(tmp_path / 's.pth'), edit)
    for strict in (True, False):
        _check_error(path, build(1), CheckpointMismatchError,
                     'size mismatch for keep.bias: copying a param with '
                     'shape [5] from checkpoint, the shape in current model '
                     'is [16].', strict=strict)


@pytest.mark.parametrize('field,value,fragment', [
    ('w_bits', 9, 'w_bits must be an int in [2, 8], got 9'),
    ('w_bits', 1, 'w_bits must be an int in [2, 8], got 1'),
    ('w_bits', True, 'w_bits must be an int in [2, 8], got True'),
    ('w_bits', 3, "holds 512 bytes but 1024 3-bit values need 384"),
    ('a_bits', 16, 'a_bits must be null or an int in [2, 8], got 16'),
    ('numel', 7, 'numel 7 does not match shape [16, 16, 2, 2]'),
    ('shape', [16, 16, 2], 'numel 1024 does not match shape [16, 16, 2]'),
    ('act_signed', 1, 'act_signed must be a bool, got 1'),
    ('channels', -1, 'channels must be a non-negative int, got -1'),
])
def test_bad_layer_record(saved, tmp_path, field, value, fragment):

    def edit(tensors, meta):
        _record(meta, 'pad')[field] = value

    path = _rewrite(saved[1], str(tmp_path / 'b.pth'), edit)
    err = _check_error(path, build(1), CheckpointError, "layer 'pad'",
                       fragment)
    assert not isinstance(err, CheckpointMismatchError)


def test_out_of_range_integers(saved, tmp_path):

    def edit(tensors, meta):
        packed = tensors['pad.qweight_packed']
        packed[3] = (packed[3] & 0xF0) | 0x08  # 4-bit code of -8

    path = _rewrite(saved[1], str(tmp_path / 'o.pth'), edit)
    _check_error(path, build(1), CheckpointError,
                 "the integer weights of layer 'pad' are out of range",
                 'reserved 4-bit code')


@pytest.mark.parametrize('key,value,fragment', [
    ('head.weight_scale', None, "has no tensor 'head.weight_scale'"),
    ('head.qweight_packed', None, "no packed weight tensor "
     "'head.qweight_packed'"),
    ('head.weight_scale', -torch.ones(10), 'must be finite and positive'),
    ('head.act_scale', torch.ones(1), 'floating tensor of shape []'),
    ('head.qweight_packed', torch.zeros(80, dtype=torch.int8),
     '1-D uint8 tensor'),
])
def test_bad_layer_tensors(saved, tmp_path, key, value, fragment):

    def edit(tensors, meta):
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value

    path = _rewrite(saved[1], str(tmp_path / 't.pth'), edit)
    _check_error(path, build(1), CheckpointError, fragment)


def test_not_a_model_checkpoint(tmp_path):
    path = str(tmp_path / 'c.pth')
    save_container(path, {'a': torch.ones(2)}, {'note': 'x'})
    _check_error(path, build(1), CheckpointError,
                 'not a quantized model checkpoint')
    with pytest.raises(CheckpointNotFoundError):
        load_quantized(build(1), str(tmp_path / 'missing.pth'))


def test_bad_layer_list(saved, tmp_path):

    def dup(tensors, meta):
        meta['layers'].append(dict(meta['layers'][0]))

    def nest(tensors, meta):
        _record(meta, 'group')['name'] = 'dw.inner'

    for edit, fragment in ((dup, "names layer 'stem.0' twice"),
                           (nest, "nests layer 'dw.inner' inside layer "
                            "'dw'")):
        path = _rewrite(saved[1], str(tmp_path / 'l.pth'), edit)
        _check_error(path, build(1), CheckpointError, fragment)


def test_nested_record_must_exist_in_its_parent(saved, tmp_path):
    """``P.layer.<child>`` (an attention's out_proj) is the one nesting
    allowed; the child must exist in P's rebuilt module."""

    def nest(tensors, meta):
        _rename(tensors, meta, 'group', 'dw.layer.inner')

    path = _rewrite(saved[1], str(tmp_path / 'n.pth'), nest)
    _check_error(path, build(1), CheckpointMismatchError,
                 "layer 'dw.layer.inner' of the checkpoint is not in the "
                 'model')


def test_corrupted_packed_tensor(saved, tmp_path):
    _, path, _ = saved
    tensors, _ = load_container(path)
    needle = tensors['pad.qweight_packed'].numpy().tobytes()
    with open(path, 'rb') as f:
        data = bytearray(f.read())
    offset = data.find(needle)
    assert offset >= 0 and data.find(needle, offset + 1) < 0
    data[offset + 10] ^= 0x01
    bad = str(tmp_path / 'corrupt.pth')
    with open(bad, 'wb') as f:
        f.write(bytes(data))
    _check_error(bad, build(1), CheckpointError,
                 "checksum mismatch for tensor 'pad.qweight_packed'")


# ----------------------------------------------------------------- inspect


def test_inspect_quantized(saved):
    model, path, summary = saved
    info = inspect_quantized(path)
    assert [r['name'] for r in info['layers']] == ORDER
    pad = info['layers'][ORDER.index('pad')]
    assert pad['layer_type'] == 'PadConv'
    assert (pad['w_bits'], pad['a_bits']) == (4, None)
    assert pad['packed_bytes'] == 512 and pad['float_bytes'] == 4096
    assert pad['ratio'] == 8.0
    totals = info['totals']
    assert totals['layers'] == 5
    assert totals['packed_bytes'] == summary['packed_weight_bytes']
    assert totals['float_bytes'] == summary['float_weight_bytes']
    assert totals['other_bytes'] == summary['other_bytes']
    assert totals['file_bytes'] == summary['file_bytes']
    assert totals['scale_bytes'] == sum(
        4 * (model.get_submodule(n).weight_scale.numel() + 1) for n in ORDER)
    assert totals['float_model_bytes'] > totals['int_model_bytes']
    assert info['meta'] == CALLER_META
    json.dumps(info, allow_nan=False)


def test_inspect_tool(saved, capsys):
    _, path, summary = saved
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [ROOT] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    proc = subprocess.run([sys.executable, TOOL, path],
                          capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert 'bits W/A' in out and 'packed bytes' in out
    line = next(row for row in out.splitlines() if row.startswith('pad '))
    assert 'PadConv' in line and '4/-' in line and '16x16x2x2' in line
    assert '8.00x' in line
    assert 'dw ' in out and '3/8' in out
    assert f'packed weights:       {summary["packed_weight_bytes"]} ' in out
    assert 'float32 weights:' in out and 'file size:' in out
    # --json and the error path, in process.
    tool = _tool()
    assert tool.main([path, '--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['totals']['packed_bytes'] == summary['packed_weight_bytes']
    assert tool.main([path + '.missing']) == 1
    assert 'not found' in capsys.readouterr().err
    assert out.splitlines()[-1] == tool.VERDICT


def test_file_without_channels_loads(saved, tmp_path):
    """Files written before ``channels`` existed: scales along dim 0."""

    def edit(tensors, meta):
        for rec in meta['layers']:
            del rec['channels']

    path = _rewrite(saved[1], str(tmp_path / 'old.pth'), edit)
    fresh = load_quantized(build(1), path)
    x = _input()
    with torch.no_grad():
        assert torch.equal(fresh(x), saved[0](x))


def test_file_without_dtype_loads_as_float32(saved, tmp_path):
    """A record without ``dtype`` (a float32 layer's, or any record of a
    file written before ``dtype`` existed) computes in float32."""

    def edit(tensors, meta):
        # float32 layers write no dtype: the file is as before
        assert all('dtype' not in rec for rec in meta['layers'])

    path = _rewrite(saved[1], str(tmp_path / 'old.pth'), edit)
    assert {r['dtype'] for r in inspect_quantized(path)['layers']} == {
        'float32'}
    fresh = load_quantized(build(1).double(), path)
    for name in ORDER:
        layer = fresh.get_submodule(name)
        assert layer.compute_dtype == torch.float32
        assert layer.weight.dtype == torch.float32
        assert torch.equal(layer.weight, saved[0].get_submodule(name).weight)


@pytest.mark.parametrize('dtype', ['int8', 'float', 3, None])
def test_bad_dtype_record(saved, tmp_path, dtype):

    def edit(tensors, meta):
        meta['layers'][1]['dtype'] = dtype

    path = _rewrite(saved[1], str(tmp_path / 'bad.pth'), edit)
    with pytest.raises(CheckpointError, match="layer 'dw'.*dtype must be"):
        load_quantized(build(1), path)


@pytest.mark.parametrize('dtype',
                         [torch.float64, torch.bfloat16, torch.float16],
                         ids=str)
def test_round_trip_keeps_the_dtype(dtype, tmp_path):
    model = quantize(build(0).to(dtype), MIXED)
    path = str(tmp_path / 'q.pth')
    save_quantized(model, path)
    _, meta = load_container(path)
    assert {r['dtype'] for r in meta['layers']} == {str(dtype)[6:]}
    fresh = load_quantized(build(1).to(dtype), path)
    for name in ORDER:
        layer = fresh.get_submodule(name)
        assert layer.compute_dtype == dtype
        assert layer.weight.dtype == dtype
        assert layer.weight_scale.dtype == torch.float32
        assert torch.equal(layer.weight, model.get_submodule(name).weight)
    expected = model.state_dict()
    loaded = fresh.state_dict()
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key
    x = _input().to(dtype)
    with torch.no_grad():
        out = fresh(x)
        assert out.dtype == dtype
        assert torch.equal(out, model(x))


class Kinds(nn.Module):
    """Conv1d and (grouped, strided) ConvTranspose2d layers."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1,
                                     output_padding=1, groups=2)
        self.c1 = nn.Conv1d(6, 5, 3, padding=1)

    def forward(self, x):
        return self.c1(self.up(x).flatten(2))


def test_round_trip_conv1d_and_conv_transpose(tmp_path):
    torch.manual_seed(0)
    model = Kinds().eval()
    gen = torch.Generator().manual_seed(1)
    for name, bits in (('up', 3), ('c1', 4)):
        layer = model.get_submodule(name)
        q = torch.randint(-(2**(bits - 1)) + 1, 2**(bits - 1),
                          layer.weight.shape, generator=gen,
                          dtype=torch.int8)
        scale = torch.rand(layer.out_channels, generator=gen) + 0.5
        _set(model, name, QuantizedLayer(layer, q, scale, bits, 8, 0.1))
    path = str(tmp_path / 'kinds.pth')
    save_quantized(model, path)
    _, meta = load_container(path)
    up = _record(meta, 'up')
    assert (up['shape'], up['channels'], up['layer_type']) == (
        [4, 3, 3, 3], 6, 'ConvTranspose2d')
    torch.manual_seed(2)
    fresh = load_quantized(Kinds().eval(), path)
    for name in ('up', 'c1'):
        a, b = fresh.get_submodule(name), model.get_submodule(name)
        assert torch.equal(a.qweight, b.qweight)
        assert torch.equal(a.weight_scale, b.weight_scale)
        assert torch.equal(a.layer.weight, b.layer.weight)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


# ------------------------------------------- inspect validates like load


def _tool():
    """``tools/inspect_checkpoint.py`` as a module."""
    spec = importlib.util.spec_from_file_location('inspect_checkpoint', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _run_tool(*args):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [ROOT] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    return subprocess.run([sys.executable, TOOL, *args],
                          capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)


def _set_bits(tensors, meta):
    _record(meta, 'pad')['w_bits'] = 8


def _reserved_code(tensors, meta):
    tensors['pad.qweight_packed'][0] = 0x88  # two 4-bit codes of -8


def _w3_tensor(tensors, meta):
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(-3, 4, (160, ), generator=gen, dtype=torch.int8)
    tensors['head.qweight_packed'] = pack_int(q, 3)


def _drop_record(tensors, meta):
    meta['layers'] = [r for r in meta['layers'] if r['name'] != 'group']


@pytest.mark.parametrize('edit,fragment', [
    (_set_bits, "'pad.qweight_packed' holds 512 bytes but 1024 8-bit "
     "values need 1024; w_bits or shape of layer 'pad' is wrong"),
    (_reserved_code, "the integer weights of layer 'pad' are out of "
     'range'),
    (_w3_tensor, "'head.qweight_packed' holds 60 bytes but 160 4-bit "
     "values need 80; w_bits or shape of layer 'head' is wrong"),
    (_drop_record, "tensor 'group.qweight_packed' holds the packed "
     "integers of a layer that meta['layers'] has no record for"),
])
def test_inspect_fails_where_load_fails(saved, tmp_path, capsys, edit,
                                        fragment):
    """Crafted files with valid checksums fail inspect and load alike."""
    path = _rewrite(saved[1], str(tmp_path / 'crafted.pth'), edit)
    with pytest.raises(CheckpointError) as err:
        inspect_quantized(path)
    assert fragment in str(err.value)
    for strict in (True, False):
        err = _check_error(path, build(1), CheckpointError, fragment,
                           strict=strict)
        assert not isinstance(err, CheckpointMismatchError)
    tool = _tool()
    for args in ([path], [path, '--json']):
        assert tool.main(args) == 1
        out, errors = capsys.readouterr()
        assert out == '' and errors.startswith('error: ')
        assert fragment in errors


def test_packed_name_without_layer_refused_on_save(tmp_path):
    model = quantize(build(0), _uniform(4))
    model.keep.register_buffer('qweight_packed', torch.zeros(2))
    with pytest.raises(ValueError,
                       match="'keep.qweight_packed' ends like the packed"):
        save_quantized(model, str(tmp_path / 'a.pth'))
    assert os.listdir(tmp_path) == []


def test_escape():
    tool = _tool()
    assert tool.escape('conv1') == 'conv1'
    assert tool.escape('a b\tc\nd\re') == 'a b\\x09c\\x0ad\\x0de'
    assert tool.escape('\x1b[2J\x07\x7f\x9b') == '\\x1b[2J\\x07\\x7f\\x9b'
    assert tool.escape('x\\x1b') == 'x\\\\x1b'  # unambiguous
    assert tool.escape('\u202eé\u2028\ud800') == (
        '\\u202eé\\u2028\\ud800')
    assert tool.escape('\U000e0041') == '\\U000e0041'
    assert tool.escape(3) == '3' and tool.escape(None) == 'None'
    text = json.dumps({'k\x9b': '\u202e\U000e0041\x7f'}, ensure_ascii=False)
    escaped = tool.escape_json(text)
    assert escaped == ('{"k\\u009b": "\\u202e\\udb40\\udc41\\u007f"}')
    assert json.loads(escaped) == json.loads(text)


def test_inspect_escapes_file_text(saved, tmp_path):
    """Text from the file cannot drive the terminal or fake a line."""
    tool = _tool()
    evil = f'head\x1b[2J\x1b]0;pwned\x07\r\n{tool.VERDICT}\n\u202e'

    def edit(tensors, meta):
        _rename(tensors, meta, 'head', evil)
        meta['mmquant_version'] = '\x1b]0;retitled\x07'
        meta['key\x9b2J'] = 'value'

    path = _rewrite(saved[1], str(tmp_path / 'evil.pth'), edit)
    proc = _run_tool(path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for raw in ('\x1b', '\x07', '\r', '\x9b', '\u202e'):
        assert raw not in out
    lines = out.splitlines()
    assert lines[-1] == tool.VERDICT
    assert [line for line in lines if line.startswith('all checks')
            ] == [tool.VERDICT]
    assert ('head\\x1b[2J\\x1b]0;pwned\\x07\\x0d\\x0a'
            f'{tool.VERDICT}\\x0a\\u202e') in out
    assert 'written by mmquant:   \\x1b]0;retitled\\x07' in out
    assert 'key\\x9b2J' in out
    proc = _run_tool(path, '--json')
    assert proc.returncode == 0, proc.stderr
    for raw in ('\x1b', '\x07', '\r', '\x9b', '\u202e'):
        assert raw not in proc.stdout
    info = json.loads(proc.stdout)
    assert info['layers'][-1]['name'] == evil
    assert info['mmquant_version'] == '\x1b]0;retitled\x07'
    assert info['meta']['key\x9b2J'] == 'value'
    # Errors are escaped too: the path is part of the message.
    proc = _run_tool(str(tmp_path / 'missing\x1b[2J.pth'))
    assert proc.returncode == 1 and '\x1b' not in proc.stderr
    assert 'missing\\\\x1b[2J.pth' in proc.stderr


def test_inspect_tool_on_untrusted_files(tmp_path, capsys):
    """Deep meta and a FIFO: one error line and status 1, no traceback."""
    tool = _tool()
    deep = str(tmp_path / 'deep.pth')
    meta = '{"layers":' + '[' * 50000 + ']' * 50000 + '}'
    torch.save({'format': 'mmquant-int', 'format_version': 1, 'meta': meta,
                'tensors': {}, 'checksums': {},
                'meta_sha256': hashlib.sha256(meta.encode()).hexdigest()},
               deep)
    assert tool.main([deep]) == 1
    out, err = capsys.readouterr()
    assert out == '' and err.startswith('error: ')
    assert 'more than 64 levels deep' in err
    if hasattr(os, 'mkfifo'):
        fifo = str(tmp_path / 'fifo.pth')
        os.mkfifo(fifo)
        # A FIFO without a writer: refused at once, never opened for
        # a blocking read (the subprocess would otherwise time out).
        proc = _run_tool(fifo)
        assert proc.returncode == 1
        assert 'is a FIFO (named pipe), not a regular file' in proc.stderr
