"""Tests for mmquant.checkpoint.packing."""
import pytest
import torch

from mmquant.checkpoint import packing
from mmquant.checkpoint.packing import (int_range, pack_int, packed_nbytes,
                                        unpack_int)

ALL_BITS = list(range(2, 9))
LENGTHS = [0, 1, 7, 8, 9, 1001]


def _random_q(bits: int, n: int, seed: int = 0) -> torch.Tensor:
    qmin, qmax = int_range(bits)
    g = torch.Generator().manual_seed(seed * 100 + bits)
    q = torch.randint(qmin, qmax + 1, (n, ), generator=g)
    if n >= 2:  # always include both extremes
        q[0], q[-1] = qmin, qmax
    return q


def _reference_pack(q: torch.Tensor, bits: int) -> bytes:
    """Slow bit-by-bit reference of the documented little-endian stream."""
    nbits = q.numel() * bits
    out = bytearray((nbits + 7) // 8)
    for i, v in enumerate(q.tolist()):
        code = v & ((1 << bits) - 1)
        for b in range(bits):
            if code >> b & 1:
                pos = i * bits + b
                out[pos // 8] |= 1 << (pos % 8)
    return bytes(out)


@pytest.mark.parametrize('bits', ALL_BITS)
@pytest.mark.parametrize('n', LENGTHS)
def test_round_trip(bits, n):
    q = _random_q(bits, n)
    packed = pack_int(q, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packed_nbytes(n, bits) == (n * bits + 7) // 8
    out = unpack_int(packed, bits, n)
    assert out.dtype == torch.int8 and out.shape == (n, )
    assert torch.equal(out.long(), q)


@pytest.mark.parametrize('bits', ALL_BITS)
def test_matches_reference_bitstream(bits):
    for n in (1, 5, 8, 13, 64):
        q = _random_q(bits, n, seed=n)
        assert bytes(pack_int(q, bits).tolist()) == _reference_pack(q, bits)


@pytest.mark.parametrize('bits', ALL_BITS)
def test_round_trip_across_chunks(bits, monkeypatch):
    # Force several vectorised chunks (and a partial last one).
    monkeypatch.setattr(packing, '_CHUNK', 16)
    q = _random_q(bits, 101, seed=3)
    packed = pack_int(q, bits)
    assert bytes(packed.tolist()) == _reference_pack(q, bits)
    assert torch.equal(unpack_int(packed, bits, 101).long(), q)


def test_worked_example_3bit():
    # The example in docs/checkpoint_format.md.
    q = torch.tensor([1, -1, 0, 3, -3, 2, -2, 1])
    assert pack_int(q, 3).tolist() == [0x39, 0x56, 0x39]


def test_exact_sizes():
    assert packed_nbytes(8, 3) == 3
    assert pack_int(torch.zeros(8, dtype=torch.int8), 3).numel() == 3
    assert pack_int(torch.zeros(16, dtype=torch.int8), 3).numel() == 6
    for n in (1, 2, 3, 1001):
        assert pack_int(torch.zeros(n), 4).numel() == (n + 1) // 2
        assert pack_int(torch.zeros(n), 2).numel() == (n + 3) // 4
        assert pack_int(torch.zeros(n), 8).numel() == n
    assert packed_nbytes(0, 5) == 0
    assert packed_nbytes(3, 5) == 2


def test_4bit_nibble_order_and_8bit_is_int8():
    assert pack_int(torch.tensor([1, -1]), 4).tolist() == [0xF1]
    assert pack_int(torch.tensor([1, -1, 0, 1]), 2).tolist() == [0x4D]
    q = torch.tensor([-127, 0, 5, 127], dtype=torch.int8)
    assert torch.equal(pack_int(q, 8), q.view(torch.uint8))


def test_padding_is_zero():
    # Codes 1 and 0 only; the trailing padding must be zero bits.
    assert pack_int(torch.tensor([-1]), 3).tolist() == [0x07]
    assert pack_int(torch.tensor([3]), 4).tolist() == [0x03]


def test_accepts_shapes_and_dtypes():
    q = torch.tensor([[1, -1], [0, 1]], dtype=torch.int32)
    ref = pack_int(q.flatten(), 2)
    assert torch.equal(pack_int(q, 2), ref)
    assert torch.equal(pack_int(q.float(), 2), ref)
    assert torch.equal(pack_int(q.t().contiguous().t(), 2), ref)
    with pytest.raises(ValueError, match='non-integral'):
        pack_int(torch.tensor([0.5]), 4)
    with pytest.raises(ValueError, match='NaN'):
        pack_int(torch.tensor([float('nan')]), 4)
    with pytest.raises(TypeError):
        pack_int([1, 2], 4)
    with pytest.raises(TypeError):
        pack_int(torch.tensor([True]), 4)


@pytest.mark.parametrize('bits', ALL_BITS)
def test_out_of_range(bits):
    qmin, qmax = int_range(bits)
    with pytest.raises(ValueError) as err:
        pack_int(torch.tensor([0, qmax + 1]), bits)
    msg = str(err.value)
    assert f'{bits}-bit' in msg and f'max={qmax + 1}' in msg
    with pytest.raises(ValueError, match=f'min={qmin - 1}'):
        pack_int(torch.tensor([qmin - 1, 0]), bits)


@pytest.mark.parametrize('bits', [0, 1, 9, 16, 2.0, True, None])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match='bits'):
        pack_int(torch.zeros(4), bits)
    with pytest.raises(ValueError, match='bits'):
        unpack_int(torch.zeros(4, dtype=torch.uint8), bits, 4)
    with pytest.raises(ValueError, match='bits'):
        packed_nbytes(4, bits)


def test_unpack_validation():
    good = pack_int(torch.tensor([1, 2, 3]), 3)
    with pytest.raises(ValueError, match='packed bytes'):
        unpack_int(good[:-1].clone(), 3, 3)
    with pytest.raises(ValueError, match='uint8'):
        unpack_int(good.to(torch.int8), 3, 3)
    with pytest.raises(ValueError, match='numel'):
        unpack_int(good, 3, -1)
    # The code for -2**(k-1) is reserved (outside the narrow grid).
    with pytest.raises(ValueError, match='reserved'):
        unpack_int(torch.tensor([0x04], dtype=torch.uint8), 3, 1)
    with pytest.raises(ValueError, match='reserved'):
        unpack_int(torch.tensor([0x80], dtype=torch.uint8), 8, 1)
