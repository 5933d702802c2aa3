"""ONNX export of quantized models (``mmquant.export_onnx``).

onnxruntime runs the exported QDQ graph; its outputs are compared with the
``QuantizedModel``/``QuantizedLayer`` outputs in torch.

What may differ, and the tolerance: the weight ``DequantizeLinear`` and
the activation ``QuantizeLinear`` -> ``DequantizeLinear`` are bit-exact
(``test_*_exact``); the convs/Gemms add their float32 products in another
order (MLAS vs torch), about ``1e-7`` relative. Such a difference moves an
activation that lies that close to a rounding boundary (``k + 0.5``) of
the next layer's grid by one step, and a quantized network passes that
step on (one flip in a random-weight RetinaNet changes 1% of its outputs).
So :func:`assert_same_computation` runs torch *teacher-forced*: each
quantized layer's input in torch is replaced by onnxruntime's dequantized
activation of the same call. Then (1) torch's own integers of that input
may differ from onnxruntime's only where torch's ``x / s`` is within
``TIE`` of a ``k + 0.5`` (float order flipping a tie), in at most
``MAX_FLIPS`` of the values, and (2) the outputs agree to ``REL_TOL``
of their largest magnitude (float order only; measured: below ``1e-6``).
"""
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import mmquant
from mmquant.core.activation import fake_quantize_activation
from mmquant.deploy import ExportError, export_onnx, ort_session
from mmquant.nn import QuantizedLayer

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
REL_TOL = 1e-5
TIE = 1e-3
MAX_FLIPS = 1e-3


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_ort(proto, *inputs, mode='exact'):
    """Run a ModelProto with onnxruntime's CPU provider (1 thread)."""
    sess = ort_session(proto, mode=mode, num_threads=1)
    feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
    return sess.run(None, feeds)


def assert_close(outs, refs):
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        ref = ref.detach().numpy()
        assert out.shape == ref.shape
        err = float(np.abs(out - ref).max())
        assert err <= REL_TOL * float(np.abs(ref).max()), err


def _flatten(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flatten(o)]


def assert_same_computation(run, qmodel, proto, x):
    """Teacher-forced comparison of ``run(x)`` (torch) with onnxruntime
    (see the module docstring). Returns the number of flipped values."""
    graph = onnx.ModelProto()
    graph.CopyFrom(proto)
    dq = [n for n in graph.graph.node if n.name.endswith('.act_dq')]
    for node in dq:
        graph.graph.output.append(
            onnx.helper.make_tensor_value_info(node.output[0],
                                               onnx.TensorProto.FLOAT, None))
    outs = run_ort(graph, x)
    n_out = len(proto.graph.output)
    forced = {
        n.name[:-len('.act_dq')]: torch.from_numpy(a)
        for n, a in zip(dq, outs[n_out:])
    }
    calls: dict = {}
    flips = [0, 0]

    def hook(name):

        def pre(mod, args):
            i = calls.get(name, 0)
            calls[name] = i + 1
            ort_in = forced[name if i == 0 else f'{name}.{i}']
            scale = float(mod.act_scale)
            mine = fake_quantize_activation(args[0], scale, mod.a_bits,
                                            mod.act_signed)
            moved = (mine - ort_in).abs() > 0.5 * scale
            t = (args[0] / scale)[moved]
            assert bool(((t - t.floor() - 0.5).abs() < TIE).all()), (
                f'{name}: integers differ away from a rounding tie')
            flips[0] += int(moved.sum())
            flips[1] += moved.numel()
            return (ort_in, ) + tuple(args[1:])

        return pre

    handles = [
        m.register_forward_pre_hook(hook(n))
        for n, m in qmodel.named_modules()
        if isinstance(m, QuantizedLayer) and m.a_bits is not None
    ]
    try:
        with torch.no_grad():
            refs = _flatten(run(x))
    finally:
        for h in handles:
            h.remove()
    assert sum(calls.values()) == len(dq)
    assert flips[0] <= MAX_FLIPS * flips[1], flips
    assert_close(outs[:n_out], refs)
    return flips[0]


class ResNetLike(nn.Module):
    """conv-bn-relu stem, a residual block, pooling, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(y)))
        x = torch.relu(self.down(x))
        return self.fc(x.mean((2, 3)))


class MobileLike(nn.Module):
    """Depthwise and grouped convs, a signed-input conv, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.bn = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 24, 1)  # input after BN: signed
        self.group = nn.Conv2d(24, 24, 3, padding=1, groups=4)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.bn(self.dw(x))
        x = torch.relu(self.group(torch.relu(self.pw(x))))
        return self.fc(torch.flatten(x.mean((2, 3)), 1))


def _randomize_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)
    return model.eval()


def _quantize(cls, w_bits, a_bits=8, size=16):
    torch.manual_seed(0)
    model = _randomize_bn(cls())
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(4, 3, size, size, generator=gen)
               for _ in range(2)]
    cfg = mmquant.QuantConfig(w_bits=w_bits, a_bits=a_bits, method='rtn',
                              first_last_bits=None)
    qmodel, _ = mmquant.quantize(model, batches, cfg)
    return qmodel.eval()


def _initializers(proto):
    return {t.name: t for t in proto.graph.initializer}


@pytest.mark.parametrize('w_bits', [8, 4, 3, 2])
def test_classifier_matches_torch(w_bits):
    qmodel = _quantize(ResNetLike, w_bits)
    proto = export_onnx(qmodel, torch.randn(1, 3, 16, 16))
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    assert_same_computation(qmodel, qmodel, proto, x)
    # the graph: opset 21, one weight DQ per quantized layer, stored in
    # INT8 (W5-W8) or INT4 (W2-W4), and no float weight left
    assert [(o.domain, o.version)
            for o in proto.opset_import] == [('', 21)]
    layers = {n: m for n, m in qmodel.named_modules()
              if isinstance(m, QuantizedLayer)}
    inits = _initializers(proto)
    want = (onnx.TensorProto.INT4
            if w_bits <= 4 else onnx.TensorProto.INT8)
    for name, layer in layers.items():
        q = inits[f'{name}.qweight']
        assert q.data_type == want
        got = onnx.numpy_helper.to_array(q).astype(np.int64)
        assert np.array_equal(got, layer.qweight.numpy())
        assert f'{name}.weight' not in inits
    dq = [n for n in proto.graph.node if n.name.endswith('.weight_dq')]
    assert len(dq) == len(layers) == 5


def test_depthwise_grouped_linear_matches_torch():
    qmodel = _quantize(MobileLike, 4)
    assert qmodel.dw.layer.groups == 16 and qmodel.group.layer.groups == 4
    assert qmodel.pw.act_signed and not qmodel.group.act_signed
    proto = export_onnx(qmodel, torch.randn(1, 3, 16, 16))
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    assert_same_computation(qmodel, qmodel, proto, x)
    # the signed input is held on the narrow grid (>= -127 s), then INT8
    # Q/DQ; the unsigned one needs nothing (UINT8 is its grid)
    ops = {n.name: n for n in proto.graph.node}
    assert 'pw.act_max' in ops and 'pw.act_min' not in ops
    assert 'group.act_max' not in ops and 'group.act_min' not in ops
    zp = _initializers(proto)['pw.act_zero_point']
    assert zp.data_type == onnx.TensorProto.INT8
    zp = _initializers(proto)['group.act_zero_point']
    assert zp.data_type == onnx.TensorProto.UINT8


def _probe_layer(a_bits, signed, scale):
    """A depthwise 1x1 conv with weight 1: it outputs its fake-quantized
    input exactly (one product with 1.0, nothing to add)."""
    conv = nn.Conv2d(4, 4, 1, groups=4, bias=False)
    return nn.Sequential(
        QuantizedLayer(conv, torch.ones(4, 1, 1, 1, dtype=torch.int8),
                       torch.ones(4), w_bits=8, a_bits=a_bits,
                       act_scale=scale, act_signed=signed))


@pytest.mark.parametrize('a_bits,signed', [(8, False), (8, True),
                                           (4, False), (4, True),
                                           (2, True)])
def test_activation_qdq_exact(a_bits, signed):
    """QuantizeLinear rounds half to even, as torch.round does: the
    exported Q/DQ equals fake_quantize_activation bit for bit, at the
    half-integers and beyond the grid on both sides."""
    scale = 0.25
    half = torch.arange(-300, 301, dtype=torch.float32) * 0.5 * scale
    noise = torch.randn(4 * 200, generator=torch.Generator().manual_seed(5))
    x = torch.cat([half, half.flip(0), noise * 40 * scale])
    x = x[:x.numel() // 4 * 4].reshape(1, 4, -1, 1)
    model = _probe_layer(a_bits, signed, scale)
    proto = export_onnx(model, x)
    out = run_ort(proto, x)[0]
    ref = fake_quantize_activation(x, scale, a_bits, signed).numpy()
    assert np.array_equal(out, ref)
    with torch.no_grad():
        assert np.array_equal(model(x).numpy(), ref)
    # ties really go to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (2-bit: 1)
    ties = out.reshape(-1)[[301, 303, 305]].tolist()
    assert ties == ([0.0, 0.25, 0.25] if a_bits == 2 else [0.0, 0.5, 0.5])


def test_weight_dq_exact():
    """DequantizeLinear(q, s) equals the QuantizedLayer's weight bit for
    bit, per output channel (a depthwise 1x1 conv on ones outputs it)."""
    gen = torch.Generator().manual_seed(6)
    q = torch.randint(-7, 8, (8, 1, 1, 1), generator=gen, dtype=torch.int8)
    scale = torch.rand(8, generator=gen) * 0.1 + 1e-3
    layer = QuantizedLayer(nn.Conv2d(8, 8, 1, groups=8, bias=False), q,
                           scale, w_bits=4)
    model = nn.Sequential(layer)
    x = torch.ones(1, 8, 1, 1)
    out = run_ort(export_onnx(model, x), x)[0]
    assert np.array_equal(out.reshape(-1),
                          layer.layer.weight.reshape(-1).numpy())


def test_w4_file_is_an_eighth_of_float(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.Conv2d(64, 64, 3)).eval()
    float_path = tmp_path / 'float.onnx'
    torch.onnx.export(model, (torch.randn(1, 32, 8, 8), ), str(float_path),
                      dynamo=False, opset_version=20)
    cfg = mmquant.QuantConfig(w_bits=4, a_bits=8, method='rtn',
                              first_last_bits=None)
    qmodel, _ = mmquant.quantize(model, [torch.randn(2, 32, 8, 8)], cfg)
    path = tmp_path / 'w4.onnx'
    export_onnx(qmodel, torch.randn(1, 32, 8, 8), str(path))
    inits = _initializers(onnx.load(str(path)))
    numel = 0
    for name, layer in qmodel.named_modules():
        if isinstance(layer, QuantizedLayer):
            # two 4-bit values a byte
            q = inits[f'{name}.qweight']
            assert len(q.raw_data) == (layer.qweight.numel() + 1) // 2
            numel += layer.qweight.numel()
    assert numel == 92160
    float_size = os.path.getsize(float_path)
    size = os.path.getsize(path)
    assert float_size > 4 * numel
    # 1/8 of the float file, plus scales, biases and graph: < 1/7
    assert float_size / 8 < size < float_size / 7, (size, float_size)
    # int4=False: the same integers as INT8, for runtimes without INT4
    proto8 = export_onnx(qmodel, torch.randn(1, 32, 8, 8), int4=False)
    q8 = _initializers(proto8)['0.qweight']
    assert q8.data_type == onnx.TensorProto.INT8
    assert np.array_equal(onnx.numpy_helper.to_array(q8),
                          qmodel[0].qweight.numpy())
    x = torch.randn(2, 32, 8, 8)
    assert np.array_equal(run_ort(proto8, x)[0],
                          run_ort(onnx.load(str(path)), x)[0])


def _retinanet():
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    cfg = dict(
        type='RetinaNet',
        data_preprocessor=dict(
            type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
            pad_size_divisor=32),
        backbone=dict(type='ResNet', depth=18, base_channels=8,
                      stem_channels=8, num_stages=4,
                      out_indices=(0, 1, 2, 3), style='pytorch'),
        neck=dict(type='FPN', in_channels=[8, 16, 32, 64], out_channels=16,
                  start_level=1, add_extra_convs='on_input', num_outs=5),
        bbox_head=dict(
            type='RetinaHead', num_classes=3, in_channels=16,
            stacked_convs=2, feat_channels=16,
            anchor_generator=dict(type='AnchorGenerator',
                                  octave_base_scale=2, scales_per_octave=2,
                                  ratios=[0.5, 1.0, 2.0],
                                  strides=[8, 16, 32, 64, 128]),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                            target_means=[.0, .0, .0, .0],
                            target_stds=[1.0, 1.0, 1.0, 1.0]),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True),
            loss_bbox=dict(type='L1Loss')),
        test_cfg=dict(nms_pre=200, min_bbox_size=0, score_thr=0.05,
                      nms=dict(type='nms', iou_threshold=0.5),
                      max_per_img=20))
    torch.manual_seed(0)
    return _randomize_bn(MODELS.build(cfg))


def test_retinanet_tensor_outputs_match_torch():
    model = _retinanet()
    gen = torch.Generator().manual_seed(7)
    batches = [torch.randn(2, 3, 64, 64, generator=gen) for _ in range(2)]
    calib = [{'inputs': b} for b in batches]

    class Tensor(nn.Module):

        def __init__(self, det):
            super().__init__()
            self.det = det

        def forward(self, inputs):
            return self.det(inputs, None, 'tensor')

    cfg = mmquant.QuantConfig(w_bits=4, a_bits=8, method='rtn',
                              first_last_bits=None)
    qwrap, _ = mmquant.quantize(Tensor(model), [b['inputs'] for b in calib],
                                cfg)
    qdet = qwrap.det.eval()
    assert qdet.bbox_head.retina_cls.act_signed is False
    signed = [n for n, m in qdet.named_modules()
              if isinstance(m, QuantizedLayer) and m.act_signed]
    assert signed  # the FPN outputs feed the head: signed inputs
    x = torch.randn(2, 3, 64, 64, generator=gen)
    proto = export_onnx(qdet, torch.randn(1, 3, 64, 64))
    names = [o.name for o in proto.graph.output]
    assert names == [f'output_{i}' for i in range(10)]
    # initializers are named as in the model's state dict
    inits = _initializers(proto)
    for name in ('bbox_head.retina_cls.layer.bias', 'backbone.bn1.weight',
                 'bbox_head.retina_cls.qweight'):
        assert name in inits
    with torch.no_grad():
        cls_scores, bbox_preds = qdet(x, None, 'tensor')
    assert cls_scores[0].shape == (2, 18, 8, 8)
    assert bbox_preds[4].shape == (2, 24, 1, 1)
    # each head conv runs once per FPN level: 5 Q/DQ calls, one set of
    # integers
    dq = [n.name for n in proto.graph.node if n.op_type == 'DequantizeLinear'
          and n.name.startswith('bbox_head.retina_cls.')]
    assert sorted(dq) == sorted(
        ['bbox_head.retina_cls.act_dq', 'bbox_head.retina_cls.weight_dq'] +
        [f'bbox_head.retina_cls.{i}.{k}_dq' for i in range(1, 5)
         for k in ('act', 'weight')])
    assert_same_computation(lambda t: qdet(t, None, 'tensor'), qdet, proto,
                            x)


def test_float_model_is_refused(tmp_path):
    path = tmp_path / 'm.onnx'
    with pytest.raises(ExportError, match='holds no QuantizedLayer: it is '
                       'a float model'):
        export_onnx(ResNetLike().eval(), torch.randn(1, 3, 16, 16),
                    str(path))
    assert not path.exists()
    # a float baseline on request: no Q/DQ, the float weights
    model = _randomize_bn(ResNetLike())
    proto = export_onnx(model, torch.randn(1, 3, 16, 16), str(path),
                        require_quantized=False)
    assert not any('Quantize' in n.op_type for n in proto.graph.node)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert_close(run_ort(proto, x), [model(x)])


def test_wrong_shape_is_refused(tmp_path):
    qmodel = _quantize(ResNetLike, 8)
    path = tmp_path / 'm.onnx'
    with pytest.raises(ExportError, match=r'does not run on example inputs '
                       r'of shape \(1, 1, 16, 16\)'):
        export_onnx(qmodel, torch.randn(1, 1, 16, 16), str(path))
    assert not path.exists()
    with pytest.raises(ExportError, match='must be float32'):
        export_onnx(qmodel, torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_unsupported_layers_are_refused(tmp_path):
    path = tmp_path / 'm.onnx'
    attn = nn.MultiheadAttention(8, 2)
    qattn = QuantizedLayer(attn, torch.zeros(24, 8, dtype=torch.int8),
                           torch.ones(24), w_bits=8)
    model = nn.Sequential()
    model.add_module('attn', qattn)
    with pytest.raises(ExportError,
                       match="layer 'attn': a quantized "
                       'nn.MultiheadAttention cannot be exported'):
        export_onnx(model, torch.randn(3, 1, 8), str(path))
    deconv = nn.ConvTranspose2d(4, 4, 2, groups=2)
    model = nn.Sequential(
        QuantizedLayer(deconv, torch.zeros(4, 2, 2, 2, dtype=torch.int8),
                       torch.ones(4), w_bits=8))
    with pytest.raises(ExportError, match=r"layer '0': a grouped "
                       r'nn.ConvTranspose2d \(groups=2\)'):
        export_onnx(model, torch.randn(1, 4, 4, 4), str(path))
    assert not path.exists()


def test_conv_transpose_and_conv1d_match_torch():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(1),
        nn.Unflatten(1, (6, 4, 4)), nn.ConvTranspose2d(6, 5, 2, stride=2))
    batches = [torch.randn(4, 3, 16) for _ in range(2)]
    qmodel, _ = mmquant.quantize(
        model.eval(), batches,
        mmquant.QuantConfig(w_bits=4, a_bits=8, method='rtn'))
    proto = export_onnx(qmodel, torch.randn(1, 3, 16))
    axes = {n.name: n.attribute[0].i for n in proto.graph.node
            if n.name.endswith('.weight_dq')}
    assert axes == {'0.weight_dq': 0, '4.weight_dq': 1}
    # the batch is declared dynamic on the output too (torch's exporter
    # writes 1 there after the Unflatten)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['batch', 5, 8, 8]
    x = torch.randn(3, 3, 16)
    assert_same_computation(qmodel, qmodel, proto, x)


def test_dynamic_batch_and_atomic_write(tmp_path):
    qmodel = _quantize(ResNetLike, 8)
    path = tmp_path / 'sub' / 'm.onnx'
    export_onnx(qmodel, torch.randn(1, 3, 16, 16), str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    x = torch.randn(9, 3, 16, 16)
    assert_same_computation(qmodel, qmodel, proto, x)
    assert os.listdir(tmp_path / 'sub') == ['m.onnx']
    # the folded session (weights folded to float at load, BatchNorm
    # folded into the convs) differs from torch by float rounding only
    with torch.no_grad():
        ref = qmodel(x)
    out = run_ort(proto, x, mode='folded')[0]
    assert np.array_equal(out.argmax(1), ref.numpy().argmax(1))
    assert np.abs(out - ref.numpy()).max() < 0.05 * ref.abs().max()
    with pytest.raises(ValueError, match="mode must be one of"):
        ort_session(proto, mode='fast')


def test_import_mmquant_does_not_import_onnx():
    code = ('import sys, mmquant; assert callable(mmquant.export_onnx); '
            "assert 'onnx' not in sys.modules; "
            "assert 'onnxruntime' not in sys.modules")
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, '-c', code], check=True, env=env,
                   cwd=ROOT)
