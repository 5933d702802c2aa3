"""Sampled statistics without full im2col: bit-identical to im2col.

The statistics phase builds only the sampled rows of a batch (gathered
from the padded input) instead of the whole im2col followed by a row
selection. These tests prove the rows, and the accumulated ``A``, ``C``
and ``yy``, are bit for bit those of the im2col path, for every conv
geometry and for linear layers, with and without row sampling, and that
the pipeline's quantized weights do not change.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmquant
import mmquant.core.stats as stats_mod
from mmquant import QuantConfig
from mmquant.core.stats import LayerGeometry, StatsAccumulator

CONVS = {
    'plain': lambda: nn.Conv2d(3, 4, 3, padding=1),
    'stride_dilation': lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2,
                                         dilation=2),
    'rect_stride': lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 3),
                                     dilation=(1, 2), padding=(1, 0)),
    'groups': lambda: nn.Conv2d(6, 4, (3, 1), padding=(1, 0), groups=2),
    'depthwise': lambda: nn.Conv2d(5, 5, 3, padding=1, groups=5),
    'reflect': lambda: nn.Conv2d(3, 4, 3, padding=1,
                                 padding_mode='reflect'),
    'circular': lambda: nn.Conv2d(2, 3, 3, padding=2, dilation=2,
                                  padding_mode='circular'),
    'replicate': lambda: nn.Conv2d(2, 3, 3, stride=(2, 1), padding=1,
                                   padding_mode='replicate'),
    'same_even': lambda: nn.Conv2d(2, 3, 4, padding='same'),
    'same_dilated': lambda: nn.Conv2d(2, 3, (2, 3), padding='same',
                                      dilation=(3, 2)),
    'valid': lambda: nn.Conv2d(2, 3, 3, padding='valid'),
    'pointwise': lambda: nn.Conv2d(7, 5, 1),
}


def _conv_case(name, batch=3, hw=(11, 10)):
    torch.manual_seed(0)
    conv = CONVS[name]()
    x = torch.randn(batch, conv.in_channels, *hw)
    with torch.no_grad():
        y = conv(x) - conv.bias.reshape(1, -1, 1, 1)
    return conv, x, y


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize('name', sorted(CONVS))
def test_gathered_rows_equal_im2col_rows(name):
    conv, x, _ = _conv_case(name)
    acc = StatsAccumulator(LayerGeometry.from_module(conv))
    full = acc.input_rows(x)
    g = torch.Generator().manual_seed(3)
    for idx in (torch.randperm(full.shape[0], generator=g)[:37],
                torch.arange(full.shape[0]),
                torch.tensor([0, full.shape[0] - 1, 0, 5]),
                torch.zeros(0, dtype=torch.long)):
        rows = acc.input_rows(x, idx)
        assert _same(rows, full[idx]), name


def test_gathered_rows_keep_dtype():
    conv, x, _ = _conv_case('stride_dilation')
    acc = StatsAccumulator(LayerGeometry.from_module(conv))
    idx = torch.tensor([4, 1, 9])
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        xd = x.to(dtype)
        assert _same(acc.input_rows(xd, idx), acc.input_rows(xd)[idx])


def test_linear_rows_with_index():
    lin = nn.Linear(6, 4)
    acc = StatsAccumulator(LayerGeometry.from_module(lin))
    x = torch.randn(2, 5, 6)
    idx = torch.tensor([7, 0, 3])
    assert _same(acc.input_rows(x, idx), x.reshape(-1, 6)[idx])
    assert _same(acc.input_rows(x, None), x.reshape(-1, 6))


@pytest.mark.parametrize('bad, match', [
    (torch.tensor([0.5]), 'integer'),
    (torch.tensor([True]), 'integer'),
    (torch.tensor([[0]]), '1-D'),
    (torch.tensor([-1]), 'out of range'),
    (torch.tensor([3 * 11 * 10]), 'out of range'),
])
def test_bad_index_is_refused(bad, match):
    conv, x, _ = _conv_case('plain')
    acc = StatsAccumulator(LayerGeometry.from_module(conv))
    with pytest.raises(ValueError, match=match):
        acc.input_rows(x, bad)


def test_bad_conv_input_with_index():
    conv, x, _ = _conv_case('plain')
    acc = StatsAccumulator(LayerGeometry.from_module(conv))
    with pytest.raises(ValueError, match=r'conv inputs must be \(B, 3'):
        acc.input_rows(x[:, :2], torch.tensor([0]))


def _old_update(acc, x, y):
    """The previous sampled conv update: im2col of every chunk, then
    index_select of the kept rows (reference for bit-identity)."""
    g = acc.geom
    x = acc._pad(x)
    (kh, kw), (sh, sw), (dh, dw) = g.kernel_size, g.stride, g.dilation
    B = x.shape[0]
    Ho, Wo = y.shape[2:]
    L = Ho * Wo
    cols = g.in_channels * kh * kw
    keep = acc._pick(B * L)
    per_sample = L * cols
    if per_sample <= stats_mod._CHUNK_ELEMS:
        step = max(1, stats_mod._CHUNK_ELEMS // per_sample)
        chunks = [(b, min(B, b + step), 0, Ho) for b in range(0, B, step)]
    else:
        strip = max(1, stats_mod._CHUNK_ELEMS // max(1, Wo * cols))
        chunks = [(b, b + 1, r, min(Ho, r + strip)) for b in range(B)
                  for r in range(0, Ho, strip)]
    for b0, b1, r0, r1 in chunks:
        lo, hi = b0 * L + r0 * Wo, (b1 - 1) * L + r1 * Wo
        sel = None
        if keep is not None:
            i0 = int(torch.searchsorted(keep, lo))
            i1 = int(torch.searchsorted(keep, hi))
            if i0 == i1:
                continue
            sel = keep[i0:i1] - lo
        xs = x[b0:b1, :, r0 * sh:(r1 - 1) * sh + dh * (kh - 1) + 1]
        p = F.unfold(xs, (kh, kw), dilation=(dh, dw), stride=(sh, sw))
        p = p.transpose(1, 2).reshape(-1, cols)
        ys = y[b0:b1, :, r0:r1].flatten(2).transpose(1, 2).reshape(
            -1, g.out_channels)
        if sel is not None:
            p, ys = p.index_select(0, sel), ys.index_select(0, sel)
        acc._accumulate(p, ys)


@pytest.mark.parametrize('chunk', [1 << 23, 200, 1])
@pytest.mark.parametrize('rows', [None, 1, 40, 10_000])
@pytest.mark.parametrize('name', sorted(CONVS))
def test_update_bit_identical_to_im2col(monkeypatch, name, rows, chunk):
    """Same generator draws, same chunks: A, C, yy equal bit for bit
    (chunk 200 / 1: strips of output rows, some with no kept row)."""
    monkeypatch.setattr(stats_mod, '_CHUNK_ELEMS', chunk)
    conv, x, y = _conv_case(name)
    geom = LayerGeometry.from_module(conv)
    new = StatsAccumulator(geom, rows, torch.Generator().manual_seed(5))
    old = StatsAccumulator(geom, rows, torch.Generator().manual_seed(5))
    for _ in range(2):
        new.update(x, y)
        _old_update(old, x, y)
    assert new.n_rows == old.n_rows > 0
    for a, b in ((new.A, old.A), (new.C, old.C), (new.yy, old.yy)):
        assert _same(a, b)
    # both generators consumed the same draws
    assert torch.equal(new.generator.get_state(), old.generator.get_state())


@pytest.mark.parametrize('rows', [None, 3, 1000])
def test_linear_update_bit_identical(rows):
    lin = nn.Linear(9, 5)
    geom = LayerGeometry.from_module(lin)
    x = torch.randn(4, 6, 9)
    with torch.no_grad():
        y = lin(x) - lin.bias
    new = StatsAccumulator(geom, rows, torch.Generator().manual_seed(2))
    ref = StatsAccumulator(geom)
    new.update(x, y)
    keep = new.rows_per_batch
    g = torch.Generator().manual_seed(2)
    xr, yr = x.reshape(-1, 9), y.reshape(-1, 5)
    if keep is not None and keep < xr.shape[0]:
        idx = torch.randperm(xr.shape[0], generator=g)[:keep].sort().values
        xr, yr = xr[idx], yr[idx]
    ref.update_rows(xr, yr)
    for a, b in ((new.A, ref.A), (new.C, ref.C), (new.yy, ref.yy)):
        assert _same(a, b)


def test_sampled_update_builds_no_full_im2col(monkeypatch):
    """With row sampling, neither update() nor input_rows(x, index)
    runs F.unfold (whose output would be every row of the batch)."""
    conv, x, y = _conv_case('stride_dilation')
    acc = StatsAccumulator(LayerGeometry.from_module(conv), 5,
                           torch.Generator().manual_seed(0))

    def no_unfold(*args, **kwargs):
        raise AssertionError('full im2col materialised')

    monkeypatch.setattr(stats_mod.F, 'unfold', no_unfold)
    acc.update(x, y)
    assert acc.n_rows == 5
    assert acc.input_rows(x, torch.tensor([0, 3])).shape == (2, 36)


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, padding_mode='reflect'), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


@pytest.mark.parametrize('ec', [False, True])
def test_pipeline_weights_unchanged(monkeypatch, ec):
    """mmquant.quantize with sampled rows: the same integers and scales
    as with the previous full-im2col-then-select rows."""
    torch.manual_seed(1)
    data = list(torch.randn(12, 3, 12, 12).split(4))
    cfg = dict(w_bits=4, a_bits=8, rows_per_layer=50,
               error_compensation=ec)
    qnew, _ = mmquant.quantize(_tiny_net(), data, QuantConfig(**cfg))
    full = StatsAccumulator.input_rows

    def old_rows(self, inputs, index=None):
        rows = full(self, inputs)
        return rows if index is None else rows[index].clone()

    monkeypatch.setattr(StatsAccumulator, 'input_rows', old_rows)
    qold, _ = mmquant.quantize(_tiny_net(), data, QuantConfig(**cfg))
    sd_new, sd_old = qnew.state_dict(), qold.state_dict()
    assert sd_new.keys() == sd_old.keys()
    for k in sd_new:
        assert _same(sd_new[k], sd_old[k]), k


def test_statistics_allocated_on_the_given_device():
    geom = LayerGeometry('conv', 4, 6, kernel_size=3, groups=2)
    acc = StatsAccumulator(geom, device='meta')
    for t in (acc.A, acc.C, acc.yy):
        assert t.device.type == 'meta' and t.dtype == torch.float64
    assert acc.A.shape == (2, 18, 18) and acc.C.shape == (2, 18, 3)
    assert StatsAccumulator(geom).A.device.type == 'cpu'
