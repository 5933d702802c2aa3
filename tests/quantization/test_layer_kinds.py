"""Conv1d, ConvTranspose2d and the report of every module with weights."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmquant
from mmquant import QuantConfig
from mmquant.nn import QuantizedLayer
from mmquant.nn.layer_kinds import conv2d_weight, layer_weight
from mmquant.quantization.capture import LayerCapture

LAYERS = [
    nn.Conv1d(4, 6, 3, padding=1),
    nn.Conv1d(4, 6, 2, stride=2, dilation=2, groups=2, bias=False),
    nn.Conv1d(4, 6, 4, padding='same'),
    nn.Conv1d(4, 6, 3, padding=2, padding_mode='reflect'),
    nn.ConvTranspose2d(4, 6, 2, stride=2),
    nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1,
                       groups=2),
    nn.ConvTranspose2d(4, 6, (3, 2), stride=(1, 3), padding=(2, 0),
                       dilation=(2, 1)),
]


@pytest.mark.parametrize('layer', LAYERS, ids=repr)
def test_capture_is_the_equivalent_conv2d(layer):
    """The recorded call, convolved with the equivalent conv2d weight,
    gives the layer's output (bias removed)."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7) if isinstance(layer, nn.Conv1d) else \
        torch.randn(2, 4, 5, 6)
    calls = []
    with torch.no_grad(), LayerCapture(layer, calls.append):
        out = layer(x)
    assert len(calls) == 1
    call = calls[0]
    kind = 'conv1d' if isinstance(layer, nn.Conv1d) else 'conv_transpose2d'
    w2d = conv2d_weight(layer.weight.detach(), kind, layer.groups)
    assert torch.equal(layer_weight(w2d, kind, layer.groups),
                       layer.weight)
    y = F.conv2d(call.op_input, w2d, None, call.stride, call.padding,
                 call.dilation, call.groups)
    assert y.shape == call.output.shape
    bias = 0 if layer.bias is None else layer.bias.detach().reshape(
        (1, -1) + (1, ) * (out.dim() - 2))
    ref = (out - bias).reshape(call.output.shape)
    assert torch.allclose(y, ref, atol=1e-5, rtol=1e-5)


def test_quantized_conv_transpose_scales_its_output_channels():
    layer = nn.ConvTranspose2d(4, 6, 3, groups=2)  # weight (4, 3, 3, 3)
    q = torch.arange(4 * 3 * 9).reshape(4, 3, 3, 3).remainder(15).sub(7)
    scale = torch.tensor([1., 2., 4., 8., 16., 32.])
    ql = QuantizedLayer(layer, q.to(torch.int8), scale, 4)
    w = ql.layer.weight
    for c in range(4):
        g = c // 2
        for m in range(3):
            assert torch.equal(w[c, m], q[c, m].float() * scale[g * 3 + m])
    with pytest.raises(ValueError, match='6 output channels'):
        QuantizedLayer(layer, q.to(torch.int8), scale[:4], 4)


class Mixed(nn.Module):

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.c1 = nn.Conv1d(6, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.xattn = nn.MultiheadAttention(8, 2, kdim=3, vdim=3,
                                           batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.emb = nn.Embedding(5, 8)
        self.conv3d = nn.Conv3d(1, 1, 1)
        self.unused = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        t = self.c1(torch.relu(self.up(torch.relu(self.stem(x))))
                    .flatten(2)).transpose(1, 2)
        t = self.norm(self.attn(t, t, t)[0] + t)
        mem = x.flatten(2).transpose(1, 2)
        t = t + self.xattn(t, mem, mem)[0]
        t = self.conv3d(t[:, None, None]).flatten(1, 3)
        return self.head(t.mean(1))


@pytest.mark.parametrize('ec', [False, True])
def test_every_module_with_weights_is_reported(ec):
    torch.manual_seed(0)
    model = Mixed().eval()
    data = [torch.randn(4, 3, 4, 4) for _ in range(2)]
    qmodel, report = mmquant.quantize(
        model, data, QuantConfig(w_bits=8, a_bits=8, error_compensation=ec),
        logger=lambda msg: None)
    got = {lay.name: (lay.type, lay.w_bits, lay.calls) for lay in
           report.layers}
    assert got == {
        'stem': ('Conv2d', 8, 1),
        'up': ('ConvTranspose2d', 8, 1),
        'c1': ('Conv1d', 8, 1),
        'head': ('Linear', 8, 1),
        'attn': ('MultiheadAttention', 8, 1),
        'attn.out_proj': ('NonDynamicallyQuantizableLinear', 8, 1),
        'xattn.out_proj': ('NonDynamicallyQuantizableLinear', None, 0),
        'unused': ('Linear', None, 0),
        'xattn': ('MultiheadAttention', None, 1),
        'emb': ('Embedding', None, 0),
        'conv3d': ('Conv3d', None, 1),
    }
    # the LayerNorm (1-D parameters) is not a weight to quantize
    assert report.to_dict()['summary'] == dict(quantized_layers=6,
                                               float_layers=5)
    notes = {lay.name: lay.note for lay in report.layers}
    assert notes['unused'] == 'not called by the forward pass: left float'
    assert notes['xattn.out_proj'] == (
        'never called itself: its weight is used by '
        'multi_head_attention_forward of the parent nn.MultiheadAttention '
        "'xattn', which mmquant leaves float (see its note): left float")
    assert notes['xattn'] == (
        'nn.MultiheadAttention with separate q/k/v projection weights '
        '(kdim/vdim other than embed_dim): mmquant quantizes only a packed '
        'in_proj_weight (ran 1 time(s) per pass): left float')
    assert notes['attn.out_proj'] == (
        'input kept float: the attention output reaches out_proj inside '
        'F.multi_head_attention_forward')
    assert notes['emb'] == ('Embedding: a lookup table, not a matmul (not '
                            'called by the forward pass): left float')
    assert notes['conv3d'] == (
        'Conv3d: mmquant quantizes nn.Conv1d/Conv2d/ConvTranspose2d/Linear '
        'weights only (ran 1 time(s) per pass): left float')
    for name in ('up', 'c1'):
        layer = qmodel.get_submodule(name)
        assert isinstance(layer, QuantizedLayer)
        assert int(layer.qweight.abs().max()) <= 127
    # W8A8 stays close to float (measured 0.003 / 0.002)
    x = torch.randn(4, 3, 4, 4)
    with torch.no_grad():
        err = (qmodel(x) - model(x)).norm() / model(x).norm()
    assert err < 0.05


def test_deformable_conv_is_reported_with_its_reason():
    ops = pytest.importorskip('mmcv.ops')

    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.offset = nn.Conv2d(4, 18, 3, padding=1)
            self.dcn = ops.DeformConv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.dcn(x, self.offset(x))

    try:
        Net().eval()(torch.randn(1, 4, 5, 5))
    except (RuntimeError, NotImplementedError):
        pytest.skip('mmcv DeformConv2d has no CPU kernel here')
    _, report = mmquant.quantize(Net().eval(), [torch.randn(2, 4, 5, 5)],
                                 QuantConfig(error_compensation=False),
                                 logger=lambda msg: None)
    dcn = {lay.name: lay for lay in report.layers}['dcn']
    assert dcn.w_bits is None and dcn.calls == 1
    assert dcn.note.startswith('deformable conv: its sampling offsets are '
                               'data-dependent')


def test_weight_used_without_a_call_is_noted():
    """DETR reads its query embedding's weight without calling it."""

    class Queries(nn.Module):

        def __init__(self):
            super().__init__()
            self.query = nn.Embedding(3, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x[:, None] + self.query.weight[None])

    _, report = mmquant.quantize(Queries().eval(), [torch.randn(2, 4)],
                                 QuantConfig(error_compensation=False),
                                 logger=lambda msg: None)
    notes = {lay.name: lay.note for lay in report.layers}
    assert notes == {
        'fc': '',
        'query': ('Embedding: a lookup table, not a matmul (never called '
                  'itself; its weights are used by __getitem__): left '
                  'float'),
    }
