"""Integer grids, bit planes and weight fake quantization."""
import itertools

import pytest
import torch

from mmquant.core.grid import (check_bits, dequantize, fake_quantize_weight,
                               plane_weights, qmax, split_planes,
                               stitch_planes)


@pytest.mark.parametrize('bits', range(2, 9))
def test_check_bits_accepts(bits):
    assert check_bits(bits) == bits
    assert type(check_bits(bits)) is int


@pytest.mark.parametrize('bad', [1, 9, 0, -4, True, False, 4.0, '4', None])
def test_check_bits_rejects(bad):
    with pytest.raises(ValueError, match=r'w_bits must be an integer in '
                       r'2\.\.8, got'):
        check_bits(bad, 'w_bits')


def test_qmax_and_plane_weights():
    assert [qmax(b) for b in range(2, 9)] == [1, 3, 7, 15, 31, 63, 127]
    assert plane_weights(4) == [4, 2, 1]
    assert plane_weights(2) == [1]
    with pytest.raises(ValueError):
        qmax(1)


@pytest.mark.parametrize('bits', range(2, 9))
def test_split_stitch_exact_for_every_integer(bits):
    top = qmax(bits)
    q = torch.arange(-top, top + 1, dtype=torch.int32)
    planes = split_planes(q, bits)
    assert planes.dtype == torch.int8
    assert planes.shape == (bits - 1, q.numel())
    assert set(planes.unique().tolist()) <= {-1, 0, 1}
    # canonical: every non-zero bit has the sign of q
    assert bool((planes * torch.sign(q).to(torch.int8) >= 0).all())
    back = stitch_planes(planes, bits)
    assert back.dtype in (torch.int32, torch.int64)
    assert torch.equal(back, q)
    # weights: plane 0 is the most significant
    weights = torch.tensor(plane_weights(bits))
    assert torch.equal((planes.long() * weights[:, None]).sum(0), q.long())


@pytest.mark.parametrize('bits', [2, 3, 4, 5])
def test_any_ternary_combination_stitches_into_range(bits):
    combos = torch.tensor(
        list(itertools.product([-1, 0, 1], repeat=bits - 1)),
        dtype=torch.int8).t()
    q = stitch_planes(combos, bits)
    assert int(q.abs().max()) == qmax(bits)
    # and every integer is reachable
    assert set(q.tolist()) == set(range(-qmax(bits), qmax(bits) + 1))


def test_split_keeps_shape_and_dtypes():
    q = torch.randint(-7, 8, (3, 4, 5), dtype=torch.int8)
    planes = split_planes(q, 4)
    assert planes.shape == (3, 3, 4, 5)
    assert torch.equal(stitch_planes(planes, 4).to(torch.int8), q)
    q64 = q.long()
    assert torch.equal(stitch_planes(split_planes(q64, 4), 4).long(), q64)


def test_split_rejects_out_of_range_and_floats():
    with pytest.raises(ValueError, match='must lie in'):
        split_planes(torch.tensor([8]), 4)
    with pytest.raises(ValueError, match='must lie in'):
        split_planes(torch.tensor([-2]), 2)
    with pytest.raises(TypeError):
        split_planes(torch.tensor([1.0]), 4)
    with pytest.raises(ValueError):
        split_planes(torch.tensor([1]), 9)


def test_stitch_rejects_bad_planes():
    with pytest.raises(ValueError, match='planes must have shape'):
        stitch_planes(torch.zeros(2, 5, dtype=torch.int8), 4)
    with pytest.raises(ValueError, match='only -1, 0 and 1'):
        stitch_planes(torch.full((3, 2), 2, dtype=torch.int8), 4)


def test_fake_quantize_weight_per_channel():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    scale = torch.rand(6) + 0.1
    out = fake_quantize_weight(w, scale, 4)
    q = out / scale[:, None, None, None]
    assert torch.allclose(q, q.round(), atol=1e-5)
    assert float(q.abs().max()) <= 7 + 1e-5
    ref = torch.clamp(torch.round(w / scale.view(-1, 1, 1, 1)), -7, 7)
    assert torch.allclose(out, ref * scale.view(-1, 1, 1, 1))
    with pytest.raises(ValueError, match='finite and positive'):
        fake_quantize_weight(w, torch.zeros(6), 4)
    with pytest.raises(ValueError, match='scale must have shape'):
        fake_quantize_weight(w, torch.ones(5), 4)


def test_dequantize():
    q = torch.tensor([[1, -2], [3, 0]], dtype=torch.int8)
    out = dequantize(q, torch.tensor([0.5, 2.0]))
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[0.5, -1.0], [6.0, 0.0]]))
    with pytest.raises(TypeError):
        dequantize(q.float(), torch.ones(2))
    with pytest.raises(ValueError):
        dequantize(q, torch.ones(3))
