"""nn.MultiheadAttention: in_proj and out_proj quantized."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmquant
from mmquant import QuantConfig
from mmquant.checkpoint import load_container, load_quantized, save_quantized
from mmquant.core.activation import fake_quantize_activation
from mmquant.nn import QuantizedLayer
from mmquant.nn.layer_kinds import weight_name
from mmquant.quantization.capture import LayerCapture


class Net(nn.Module):
    """Self-attention (batch first, positional call) and cross-attention
    (sequence first, keyword call as mmcv makes it)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.self_attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.cross = nn.MultiheadAttention(8, 2)
        self.head = nn.Linear(8, 3)

    def forward(self, x, mem):
        t = self.stem(x)
        t = t + self.self_attn(t, t, t)[0]
        m = self.stem(mem).transpose(0, 1)
        c = self.cross(query=t.transpose(0, 1), key=m, value=m)[0]
        return self.head(torch.relu(t + c.transpose(0, 1)))


def data(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 5, 6, generator=g),
             torch.randn(4, 7, 6, generator=g)) for _ in range(n)]


def build(seed=0):
    torch.manual_seed(seed)
    return Net().eval()


def test_capture_rows_of_the_three_projections_and_out_proj():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2).eval()
    q, kv = torch.randn(5, 2, 8), torch.randn(7, 2, 8)
    ins, outs = [], []
    with torch.no_grad(), LayerCapture(mha, ins.append), \
            LayerCapture(mha, outs.append, part='out'):
        ref = mha(q, kv, kv)[0]
    assert len(ins) == len(outs) == 1  # the recomputation is not seen
    call = ins[0]
    x, y = call.op_input[:, :, 0, 0], call.output[:, :, 0, 0]
    assert call.groups == 3 and x.shape == (10 + 14 + 14, 24)
    w = mha.in_proj_weight.detach()
    for g, (r0, r1, inp) in enumerate([(0, 10, q), (10, 24, kv),
                                       (24, 38, kv)]):
        cols = slice(8 * g, 8 * g + 8)
        assert torch.equal(x[r0:r1, cols], inp.reshape(-1, 8))
        others = x[r0:r1].clone()
        others[:, cols] = 0
        assert not others.any()  # zero in the other groups
        assert torch.equal(y[r0:r1, cols],
                           F.linear(inp.reshape(-1, 8), w[cols]))
    # the out_proj rows: the attention output, whose projection (plus
    # bias) is the module's output
    out = outs[0]
    y = F.linear(out.op_input, mha.out_proj.weight, mha.out_proj.bias)
    assert torch.allclose(y, ref, atol=1e-6)
    assert torch.equal(out.output, F.linear(out.op_input,
                                            mha.out_proj.weight))


def test_quantized_attention_computes_with_the_integers():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    q = torch.randint(-7, 8, (24, 8), dtype=torch.int8)
    scale = torch.rand(24) + 0.1
    ql = QuantizedLayer(mha, q, scale, 4, 8, 0.05, True)
    assert torch.equal(ql.layer.in_proj_weight,
                       q.float() * scale[:, None])
    assert 'in_proj_weight' not in ql.state_dict()
    x, mem = torch.randn(2, 5, 8), torch.randn(2, 6, 8)
    fq = [fake_quantize_activation(t, 0.05, 8, True) for t in (x, mem)]
    with torch.no_grad():
        got = ql(x, mem, mem)[0]
        # keywords (mmcv's call) quantize the same inputs
        assert torch.equal(ql(query=x, key=mem, value=mem)[0], got)
        ref = F.multi_head_attention_forward(
            fq[0].transpose(0, 1), fq[1].transpose(0, 1),
            fq[1].transpose(0, 1), 8, 2, q.float() * scale[:, None],
            mha.in_proj_bias, None, None, False, 0.0, mha.out_proj.weight,
            mha.out_proj.bias, training=False)[0].transpose(0, 1)
        assert torch.allclose(got, ref, atol=1e-6)
        # self-attention, no weights: torch's fused fast path may run; it
        # also uses the dequantized weights
        fast = ql(x, x, x, need_weights=False)[0]
        slow = ql(x, x, x, need_weights=True)[0]
        assert torch.allclose(fast, slow, atol=1e-5)
        assert not torch.allclose(fast, mha(x, x, x)[0], atol=1e-3)


@pytest.mark.parametrize('ec', [False, True])
def test_attention_layers_quantized_and_reported(ec):
    model = build()
    cfg = QuantConfig(w_bits=8, a_bits=8, error_compensation=ec)
    qmodel, report = mmquant.quantize(model, data(), cfg,
                                      logger=lambda msg: None)
    got = {lay.name: (lay.w_bits, lay.a_bits, lay.calls, lay.rows)
           for lay in report.layers}
    # rows: 3 batches x 20 query tokens; cross-attention keys/values: 28
    assert got == {
        'stem': (8, None, 2, 3 * (20 + 28)),
        'self_attn': (8, 8, 1, 3 * 3 * 20),
        'self_attn.out_proj': (8, None, 1, 3 * 20),
        'cross': (8, 8, 1, 3 * (20 + 28 + 28)),
        'cross.out_proj': (8, None, 1, 3 * 20),
        'head': (8, 8, 1, 3 * 20),
    }
    names = [n for n, m in qmodel.named_modules()
             if isinstance(m, QuantizedLayer)]
    assert names == ['stem', 'self_attn', 'self_attn.layer.out_proj',
                     'cross', 'cross.layer.out_proj', 'head']
    x, mem = data(1, seed=1)[0]
    with torch.no_grad():
        ref = model(x, mem)
        err = float((qmodel(x, mem) - ref).norm() / ref.norm())
    assert err < 0.05  # W8A8: measured 0.0065 (fast), 0.0071 (EC)


def test_int_checkpoint_round_trip(tmp_path):
    qmodel, _ = mmquant.quantize(
        build(), data(), QuantConfig(w_bits=4, error_compensation=False),
        logger=lambda msg: None)
    path = str(tmp_path / 'attn.pth')
    save_quantized(qmodel, path)
    _, meta = load_container(path)
    recs = {r['name']: r for r in meta['layers']}
    assert recs['cross']['shape'] == [24, 8]
    assert recs['cross']['layer_type'] == 'MultiheadAttention'
    assert recs['cross.layer.out_proj']['shape'] == [8, 8]
    fresh = load_quantized(build(seed=7), path)
    x, mem = data(1, seed=2)[0]
    with torch.no_grad():
        assert torch.equal(fresh(x, mem), qmodel(x, mem))
        # into an already quantized model as well
        again = load_quantized(qmodel, path)
        assert torch.equal(again(x, mem), fresh(x, mem))


def test_mmcv_attention_wrapper():
    transformer = pytest.importorskip('mmcv.cnn.bricks.transformer')

    class Block(nn.Module):

        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 8)
            self.attn = transformer.MultiheadAttention(8, 2,
                                                       batch_first=True)

        def forward(self, x):
            t = self.proj(x)
            return self.attn(t, query_pos=torch.ones_like(t))

    torch.manual_seed(0)
    model = Block().eval()
    batches = [torch.randn(2, 5, 4) for _ in range(2)]
    qmodel, report = mmquant.quantize(model, batches, QuantConfig(
        error_compensation=False), logger=lambda msg: None)
    got = {lay.name: (lay.type, lay.w_bits, lay.role)
           for lay in report.layers}
    # mmcv's wrapper returns query + attention: proj's output is returned
    assert got == {
        'proj': ('Linear', 8, 'input+output'),
        'attn.attn': ('MultiheadAttention', 4, None),
        'attn.attn.out_proj': ('NonDynamicallyQuantizableLinear', 8,
                               'output'),
    }
    assert isinstance(qmodel.attn.attn, QuantizedLayer)


@pytest.mark.parametrize('ec', [False, True], ids=['fast', 'ec'])
@pytest.mark.parametrize('dtype', [torch.float64, torch.bfloat16],
                         ids=str)
def test_attention_in_model_dtype(dtype, ec, tmp_path):
    """The in_proj wrapper and the out_proj nested in it keep float32
    scales and compute in the model's dtype, also after a round trip."""
    batches = [tuple(t.to(dtype) for t in b) for b in data()]
    qmodel, _ = mmquant.quantize(
        build().to(dtype), batches,
        QuantConfig(w_bits=4, a_bits=8, error_compensation=ec),
        logger=lambda msg: None)
    layers = {n: m for n, m in qmodel.named_modules()
              if isinstance(m, QuantizedLayer)}
    assert {'cross', 'cross.layer.out_proj'} <= set(layers)
    for layer in layers.values():
        assert layer.compute_dtype == dtype
        assert layer.weight_scale.dtype == torch.float32
        assert layer.act_scale.dtype == torch.float32
        assert getattr(layer.layer, weight_name(layer.layer)).dtype == dtype
    x, mem = (t.to(dtype) for t in data(1, seed=2)[0])
    with torch.no_grad():
        out = qmodel(x, mem)
    assert out.dtype == dtype
    path = str(tmp_path / 'attn.pth')
    save_quantized(qmodel, path)
    fresh = load_quantized(build(seed=7).to(dtype), path)
    expected, loaded = qmodel.state_dict(), fresh.state_dict()
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key
    with torch.no_grad():
        assert torch.equal(fresh(x, mem), out)
