"""Sufficient statistics: geometry, im2col, streaming, budget."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmquant.core.stats as stats_mod
from mmquant.core.stats import (LayerGeometry, StatsAccumulator,
                                StatsMemoryError, estimate_stats_bytes)

CONVS = {
    'plain': lambda: nn.Conv2d(3, 4, 3, padding=1, bias=False),
    'stride_dilation': lambda: nn.Conv2d(
        4, 6, 3, stride=2, padding=2, dilation=2, bias=False),
    'groups': lambda: nn.Conv2d(6, 4, (3, 1), padding=(1, 0), groups=2,
                                bias=False),
    'depthwise': lambda: nn.Conv2d(5, 5, 3, padding=1, groups=5,
                                   bias=False),
    'reflect': lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode='reflect',
                                 bias=False),
    'circular': lambda: nn.Conv2d(2, 3, 3, padding=2, dilation=2,
                                  padding_mode='circular', bias=False),
    'replicate': lambda: nn.Conv2d(2, 3, 3, stride=(2, 1), padding=1,
                                   padding_mode='replicate', bias=False),
    'same_even': lambda: nn.Conv2d(2, 3, 4, padding='same', bias=False),
    'valid': lambda: nn.Conv2d(2, 3, 3, padding='valid', bias=False),
}


def _inputs(module, batch=2, hw=(9, 8)):
    torch.manual_seed(1)
    if isinstance(module, nn.Linear):
        return torch.randn(batch, 3, module.in_features)
    return torch.randn(batch, module.in_channels, *hw)


def _check_quadratic_forms(acc, module, x, probes=4):
    """A, C, yy through the layer itself: for any weight V the layer's
    output is X v, so ||X v||^2 = v^T A v and <Y, X v> = v^T C."""
    G = acc.geom.groups
    with torch.no_grad():
        y = module(x).double()
        for _ in range(probes):
            V = torch.randn_like(module.weight)
            if isinstance(module, nn.Conv2d):
                yv = module._conv_forward(x, V, None).double()
                dims = (0, 2, 3)
            else:
                yv = F.linear(x, V).double()
                dims = tuple(range(yv.dim() - 1))
            Vg = acc.weight_matrix(V).double()  # (G, Mg, N)
            quad = torch.einsum('gmn,gnk,gmk->gm', Vg, acc.A, Vg)
            assert torch.allclose(quad.reshape(-1), (yv * yv).sum(dims),
                                  rtol=1e-5)
            cross = torch.einsum('gmn,gnm->gm', Vg, acc.C)
            assert torch.allclose(cross.reshape(-1), (y * yv).sum(dims),
                                  rtol=1e-5, atol=1e-6)
    assert torch.allclose(acc.yy.reshape(-1), (y * y).sum(dims), rtol=1e-6)
    assert acc.A.shape == (G, acc.geom.n_per_group, acc.geom.n_per_group)
    assert acc.A.dtype == torch.float64


@pytest.mark.filterwarnings('ignore:Using padding')
@pytest.mark.parametrize('name', sorted(CONVS))
def test_conv_statistics_match_the_layer(name):
    conv = CONVS[name]()
    geom = LayerGeometry.from_module(conv)
    acc = StatsAccumulator(geom)
    x = _inputs(conv)
    with torch.no_grad():
        acc.update(x, conv(x))
    y = conv(x)
    assert acc.n_rows == y.shape[0] * y.shape[2] * y.shape[3]
    _check_quadratic_forms(acc, conv, x)
    # C = A W^T exactly when the targets are the float outputs
    W = acc.weight_matrix(conv.weight.detach()).double()
    assert torch.allclose(acc.C, acc.A @ W.transpose(1, 2), rtol=1e-4,
                          atol=1e-6)


def test_linear_statistics_match_the_layer():
    lin = nn.Linear(7, 5, bias=False)
    acc = StatsAccumulator(LayerGeometry.from_module(lin))
    x = _inputs(lin)
    with torch.no_grad():
        acc.update(x, lin(x))
    assert acc.n_rows == 6
    _check_quadratic_forms(acc, lin, x)


def test_geometry_from_module():
    g = LayerGeometry.from_module(CONVS['stride_dilation']())
    assert g.kind == 'conv' and g.kernel_size == (3, 3)
    assert g.stride == (2, 2) and g.dilation == (2, 2)
    assert g.padding == (2, 2) and g.n_per_group == 36
    dw = LayerGeometry.from_module(CONVS['depthwise']())
    assert dw.groups == 5 and dw.n_per_group == 9 and dw.m_per_group == 1
    same = LayerGeometry.from_module(CONVS['same_even']())
    assert same.pad4 == (1, 2, 1, 2)
    lin = LayerGeometry.from_module(nn.Linear(7, 5))
    assert lin.kind == 'linear' and lin.n_per_group == 7
    for bad in (nn.Conv1d(2, 2, 3), nn.ReLU(), nn.ConvTranspose2d(2, 2, 3)):
        with pytest.raises(TypeError):
            LayerGeometry.from_module(bad)
    with pytest.raises(ValueError, match='divisible by groups'):
        LayerGeometry('conv', 6, 4, (3, 3), groups=4)
    assert LayerGeometry('conv', 2, 2, (3, 3), padding='same').padding == (1,
                                                                           1)

    class MyConv(nn.Conv2d):
        pass

    assert LayerGeometry.from_module(MyConv(2, 3, 1)).n_per_group == 2


def test_streaming_and_merge_equal_one_batch():
    conv = CONVS['groups']()
    geom = LayerGeometry.from_module(conv)
    x = _inputs(conv, batch=4)
    with torch.no_grad():
        y = conv(x)
    whole = StatsAccumulator(geom)
    whole.update(x, y)
    parts = StatsAccumulator(geom)
    parts.update(x[:1], y[:1])
    parts.update(x[1:], y[1:])
    other = StatsAccumulator(geom)
    other.update(x[2:], y[2:])
    merged = StatsAccumulator(geom)
    merged.update(x[:2], y[:2])
    merged.merge(other)
    for acc in (parts, merged):
        assert acc.n_rows == whole.n_rows
        for name in ('A', 'C', 'yy'):
            assert torch.allclose(getattr(acc, name), getattr(whole, name),
                                  rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match='different layers'):
        merged.merge(StatsAccumulator(LayerGeometry.from_module(
            CONVS['plain']())))


def test_chunked_im2col_equals_whole(monkeypatch):
    conv = CONVS['stride_dilation']()
    geom = LayerGeometry.from_module(conv)
    x = _inputs(conv, batch=3, hw=(13, 11))
    with torch.no_grad():
        y = conv(x)
    whole = StatsAccumulator(geom)
    whole.update(x, y)
    for limit in (36 * 7, 36 * 50):  # strips of one image / several images
        monkeypatch.setattr(stats_mod, '_CHUNK_ELEMS', limit)
        acc = StatsAccumulator(geom, rows_per_batch=40,
                               generator=torch.Generator().manual_seed(0))
        acc.update(x, y)
        ref = StatsAccumulator(geom, rows_per_batch=40,
                               generator=torch.Generator().manual_seed(0))
        monkeypatch.setattr(stats_mod, '_CHUNK_ELEMS', 1 << 23)
        ref.update(x, y)
        assert acc.n_rows == ref.n_rows == 40
        assert torch.allclose(acc.A, ref.A, rtol=1e-12, atol=1e-12)
        assert torch.allclose(acc.C, ref.C, rtol=1e-12, atol=1e-12)
        monkeypatch.setattr(stats_mod, '_CHUNK_ELEMS', limit)
        full = StatsAccumulator(geom)
        full.update(x, y)
        assert torch.allclose(full.A, whole.A, rtol=1e-12, atol=1e-12)
        assert full.n_rows == whole.n_rows


def test_row_subsampling_is_seeded_and_exact():
    conv = CONVS['plain']()
    geom = LayerGeometry.from_module(conv)
    x = _inputs(conv, batch=2)
    with torch.no_grad():
        y = conv(x)

    def run(seed):
        acc = StatsAccumulator(geom, rows_per_batch=50,
                               generator=torch.Generator().manual_seed(seed))
        acc.update(x, y)
        acc.update(x, y)
        return acc

    a, b, c = run(0), run(0), run(1)
    assert a.n_rows == 100
    assert torch.equal(a.A, b.A) and torch.equal(a.C, b.C)
    assert not torch.equal(a.A, c.A)
    # the kept rows are exactly a seeded uniform subset of the im2col rows
    rows = a.input_rows(x).double()
    outs = a.output_rows(y).double()
    g = torch.Generator().manual_seed(0)
    A = torch.zeros_like(a.A[0])
    for _ in range(2):
        keep = torch.randperm(rows.shape[0], generator=g)[:50]
        A += rows[keep].t() @ rows[keep]
    assert torch.allclose(a.A[0], A, rtol=1e-12, atol=1e-12)
    assert outs.shape == (rows.shape[0], 4)


def test_rows_api_matches_update():
    conv = CONVS['reflect']()
    geom = LayerGeometry.from_module(conv)
    x = _inputs(conv)
    with torch.no_grad():
        y = conv(x)
    acc = StatsAccumulator(geom)
    acc.update(x, y)
    rows = StatsAccumulator(geom)
    rows.update_rows(rows.input_rows(x), rows.output_rows(y))
    assert rows.n_rows == acc.n_rows
    assert torch.allclose(rows.A, acc.A, rtol=1e-12, atol=1e-12)
    assert torch.allclose(rows.C, acc.C, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match='input rows must be'):
        rows.update_rows(torch.zeros(3, 5), torch.zeros(3, 4))


def test_memory_budget_refuses_large_layers():
    geom = LayerGeometry('conv', 512, 512, (3, 3))
    need = estimate_stats_bytes(geom)
    assert need == 8 * (4608 * 4608 + 4608 * 512 + 512)
    with pytest.raises(StatsMemoryError) as err:
        StatsAccumulator(geom, max_bytes=100 << 20)
    msg = str(err.value)
    assert str(need) in msg and str(100 << 20) in msg
    assert 'max_stats_bytes' in msg and 'RTN' in msg
    assert isinstance(err.value, ValueError)
    assert isinstance(err.value, MemoryError)
    StatsAccumulator(LayerGeometry('conv', 8, 8, (3, 3)), max_bytes=1 << 20)


@pytest.mark.parametrize('which', ['inputs', 'outputs'])
def test_non_finite_rows_raise(which):
    lin = nn.Linear(4, 3, bias=False)
    acc = StatsAccumulator(LayerGeometry.from_module(lin))
    x = torch.randn(5, 4)
    y = lin(x).detach()
    (x if which == 'inputs' else y)[0, 0] = float('nan')
    with pytest.raises(ValueError, match=which):
        acc.update(x, y)
    assert acc.n_rows == 0


def test_shape_mismatch_raises():
    conv = CONVS['plain']()
    acc = StatsAccumulator(LayerGeometry.from_module(conv))
    x = _inputs(conv)
    with pytest.raises(ValueError, match='spatial size'):
        acc.update(x, torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match='conv inputs must be'):
        acc.update(torch.zeros(2, 5, 9, 8), torch.zeros(2, 4, 9, 8))
    with pytest.raises(ValueError, match='weight must have shape'):
        acc.weight_matrix(torch.zeros(4, 3, 1, 1))
    lin = StatsAccumulator(LayerGeometry('linear', 4, 3))
    with pytest.raises(ValueError, match='rows'):
        lin.update(torch.zeros(5, 4), torch.zeros(6, 3))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16],
                         ids=str)
def test_half_precision_rows_accumulate_in_float64(dtype):
    """Rows of a half-precision model are widened before the products:
    the statistics equal those of the same values given as float64."""
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 5, generator=gen).to(dtype)
    y = torch.randn(2, 6, 5, 5, generator=gen).to(dtype)
    geom = LayerGeometry.from_module(conv)
    half, wide = StatsAccumulator(geom), StatsAccumulator(geom)
    half.update(x, y)
    wide.update(x.double(), y.double())
    for acc in (half, wide):
        assert acc.A.dtype == acc.C.dtype == acc.yy.dtype == torch.float64
    assert torch.equal(half.A, wide.A)
    assert torch.equal(half.C, wide.C)
    assert torch.equal(half.yy, wide.yy)
    rows = half.input_rows(x)
    assert rows.dtype == dtype  # widened when accumulated, not before
    half.update_rows(rows, half.output_rows(y))
    wide.update_rows(rows.double(), half.output_rows(y).double())
    assert torch.equal(half.A, wide.A)
    assert torch.equal(half.C, wide.C)
