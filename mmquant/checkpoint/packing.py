"""Dense bit packing of narrow symmetric integer grids.

A ``k``-bit quantised weight takes integer values on the *narrow* symmetric
grid ``[-(2**(k-1) - 1), 2**(k-1) - 1]`` (for example ``[-1, 1]`` for 2 bits,
``[-3, 3]`` for 3 bits, ``[-127, 127]`` for 8 bits).  This module stores such
values densely:

* Every value is encoded as its ``k``-bit **two's complement** code, i.e. the
  low ``k`` bits of the integer (``code = q & (2**k - 1)``).  Code 0 is the
  value 0, so padding with code 0 decodes to zeros, and 8-bit data is stored
  as the plain ``int8`` bytes.  The code ``2**(k-1)`` (the value
  ``-2**(k-1)``) lies outside the narrow grid: it is never written and is
  rejected when read.
* Codes are concatenated into a **little-endian bitstream**: value ``i``
  occupies stream bits ``[i*k, (i+1)*k)``, its least significant bit first,
  and stream bit ``j`` is bit ``j % 8`` (``1 << (j % 8)``) of byte ``j // 8``.
  For 4 bits, value 0 is the low nibble of byte 0 and value 1 its high nibble;
  for 3 bits, 8 values fill exactly 3 bytes.
* The stream is padded with zero bits up to a whole byte, so ``numel``
  values take ``ceil(numel * k / 8)`` bytes.  The number of values (and the
  tensor shape) must be stored separately.

See ``docs/checkpoint_format.md`` for a worked example.
"""
from typing import Tuple

import torch

from mmquant.core.grid import MAX_BITS, MIN_BITS, check_bits, qmax

__all__ = [
    'MIN_BITS', 'MAX_BITS', 'int_range', 'packed_nbytes', 'pack_int',
    'unpack_int'
]


# Number of values processed per vectorised step.  Must be a multiple of 8
# so that every chunk starts on a byte boundary for every width.
_CHUNK = 1 << 21

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64,
               torch.uint8)


def int_range(bits: int) -> Tuple[int, int]:
    """Return the narrow symmetric integer range of a bit width.

    Args:
        bits (int): Bit width in ``[2, 8]``.

    Returns:
        tuple: ``(qmin, qmax)`` with ``qmax = 2**(bits-1) - 1`` and
        ``qmin = -qmax``.

    Raises:
        ValueError: If ``bits`` is outside ``[2, 8]``.
    """
    top = qmax(bits)
    return -top, top


def packed_nbytes(numel: int, bits: int) -> int:
    """Return the number of bytes ``numel`` packed ``bits``-bit values take.

    Args:
        numel (int): Number of values (``>= 0``).
        bits (int): Bit width in ``[2, 8]``.

    Returns:
        int: ``ceil(numel * bits / 8)``.

    Raises:
        ValueError: If ``numel`` is negative or not an int, or ``bits`` is
            outside ``[2, 8]``.
    """
    check_bits(bits)
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f'numel must be a non-negative int, got {numel!r}')
    return (numel * bits + 7) // 8


def _to_int64(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Flatten ``q`` to int64 on the CPU after validating it.

    Args:
        q (Tensor): Integer tensor, or floating tensor holding integral values.
        bits (int): Bit width (already validated).

    Returns:
        Tensor: A 1-D int64 CPU tensor with the same values.

    Raises:
        TypeError: If ``q`` is not a tensor or has an unsupported dtype.
        ValueError: If ``q`` holds non-integral, non-finite or out-of-range
            values.
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f'q must be a torch.Tensor, got {type(q).__name__}')
    flat = q.detach().reshape(-1).cpu()
    if flat.dtype.is_floating_point:
        if not bool(torch.isfinite(flat).all()):
            raise ValueError(f'cannot pack {bits}-bit values: q contains '
                             'NaN or infinite values')
        if not torch.equal(flat, torch.round(flat)):
            raise ValueError(f'cannot pack {bits}-bit values: q contains '
                             'non-integral values')
    elif flat.dtype not in _INT_DTYPES:
        raise TypeError(f'q must have an integer or floating dtype, got '
                        f'{flat.dtype}')
    flat = flat.to(torch.int64)
    if flat.numel():
        qmin, qmax = int_range(bits)
        lo, hi = int(flat.min()), int(flat.max())
        if lo < qmin or hi > qmax:
            raise ValueError(
                f'values out of range for {bits}-bit narrow symmetric grid '
                f'[{qmin}, {qmax}]: found min={lo}, max={hi}')
    return flat


def _pack_chunk(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack int64 values of the valid range into bytes (general path).

    Args:
        q (Tensor): 1-D int64 tensor whose length is a multiple of 8.
        bits (int): Bit width in ``[2, 7]``.

    Returns:
        Tensor: 1-D uint8 tensor of ``len(q) // 8 * bits`` bytes.
    """
    codes = (q & ((1 << bits) - 1)).view(-1, 8)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    # 8 codes of <= 7 bits fit in 56 bits: no int64 overflow.
    words = (codes << shifts).sum(dim=1, keepdim=True)
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    return ((words >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)


def _unpack_chunk(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Unpack bytes into int64 codes (general path).

    Args:
        packed (Tensor): 1-D uint8 tensor whose length is a multiple of
            ``bits``.
        bits (int): Bit width in ``[2, 7]``.

    Returns:
        Tensor: 1-D int64 tensor of ``len(packed) // bits * 8`` codes.
    """
    groups = packed.to(torch.int64).view(-1, bits)
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    words = (groups << byte_shifts).sum(dim=1, keepdim=True)
    shifts = torch.arange(8, dtype=torch.int64) * bits
    return ((words >> shifts) & ((1 << bits) - 1)).reshape(-1)


def _pack_fast(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes for widths that divide 8 (2 and 4 bits).

    Args:
        codes (Tensor): 1-D uint8 codes, length a multiple of ``8 // bits``.
        bits (int): 2 or 4.

    Returns:
        Tensor: 1-D uint8 packed bytes.
    """
    per_byte = 8 // bits
    codes = codes.view(-1, per_byte)
    out = codes[:, 0].clone()
    for j in range(1, per_byte):
        out |= codes[:, j] << (j * bits)
    return out


def _unpack_fast(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Unpack bytes into uint8 codes for 2 and 4 bits.

    Args:
        packed (Tensor): 1-D uint8 tensor.
        bits (int): 2 or 4.

    Returns:
        Tensor: 1-D uint8 codes, ``8 // bits`` per input byte.
    """
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    parts = [(packed >> (j * bits)) & mask for j in range(per_byte)]
    return torch.stack(parts, dim=1).reshape(-1)


def pack_int(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack narrow-grid signed integers densely into bytes.

    Values are stored as ``bits``-bit two's complement codes in a
    little-endian bitstream (see the module docstring), padded with zero
    bits to a whole byte.  ``q`` is flattened in C order, so its shape must
    be recorded separately.

    Args:
        q (Tensor): Tensor of any shape holding integers in
            ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``.  Integer dtypes are
            accepted, as are floating dtypes holding integral values.
        bits (int): Bit width in ``[2, 8]``.

    Returns:
        Tensor: 1-D ``torch.uint8`` CPU tensor of
        ``packed_nbytes(q.numel(), bits)`` bytes.

    Raises:
        ValueError: If ``bits`` is outside ``[2, 8]`` or a value lies outside
            the narrow grid (the message names ``bits`` and the offending
            min/max), or ``q`` holds non-integral or non-finite values.
        TypeError: If ``q`` is not a tensor of integer or floating dtype.
    """
    bits = check_bits(bits)
    flat = _to_int64(q, bits)
    numel = flat.numel()
    nbytes = packed_nbytes(numel, bits)
    if bits == 8:
        return flat.to(torch.int8).view(torch.uint8).clone()
    pad = (-numel) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    out = []
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start:start + _CHUNK]
        if bits in (2, 4):
            codes = (chunk & ((1 << bits) - 1)).to(torch.uint8)
            out.append(_pack_fast(codes, bits))
        else:
            out.append(_pack_chunk(chunk, bits))
    packed = torch.cat(out) if out else torch.empty(0, dtype=torch.uint8)
    # The zero padding codes only ever fill the dropped trailing bytes.
    return packed[:nbytes].clone()


def unpack_int(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Unpack bytes written by :func:`pack_int`.

    Args:
        packed (Tensor): 1-D ``torch.uint8`` tensor of exactly
            ``packed_nbytes(numel, bits)`` bytes (any device; the work is
            done on the CPU).
        bits (int): Bit width in ``[2, 8]`` used when packing.
        numel (int): Number of values to decode.

    Returns:
        Tensor: 1-D ``torch.int8`` CPU tensor of ``numel`` values in
        ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``.

    Raises:
        ValueError: If ``bits`` is outside ``[2, 8]``, ``numel`` is invalid,
            ``packed`` has the wrong dtype, rank or size, or it contains the
            reserved code ``2**(bits-1)`` (corrupted data).
        TypeError: If ``packed`` is not a tensor.
    """
    bits = check_bits(bits)
    nbytes = packed_nbytes(numel, bits)
    if not isinstance(packed, torch.Tensor):
        raise TypeError('packed must be a torch.Tensor, got '
                        f'{type(packed).__name__}')
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError('packed must be a 1-D torch.uint8 tensor, got '
                         f'dtype={packed.dtype}, shape={tuple(packed.shape)}')
    if packed.numel() != nbytes:
        raise ValueError(f'{numel} {bits}-bit values need {nbytes} packed '
                         f'bytes, got {packed.numel()}')
    packed = packed.detach().cpu()
    if bits == 8:
        values = packed.view(torch.int8).clone()
    else:
        # The general path decodes groups of ``bits`` bytes (8 values).
        group = 1 if bits in (2, 4) else bits
        ngroups = -(-nbytes // group)
        pad = ngroups * group - nbytes
        if pad:
            packed = torch.cat([packed, packed.new_zeros(pad)])
        step = _CHUNK // 8 * bits
        out = []
        for start in range(0, packed.numel(), step):
            chunk = packed[start:start + step]
            if bits in (2, 4):
                codes = _unpack_fast(chunk, bits).to(torch.int8)
            else:
                codes = _unpack_chunk(chunk, bits).to(torch.int8)
            out.append(codes)
        codes = torch.cat(out) if out else torch.empty(0, dtype=torch.int8)
        codes = codes[:numel]
        # Sign-extend the k-bit two's complement codes.
        sign = 1 << (bits - 1)
        values = (codes ^ sign) - sign
    reserved = -(1 << (bits - 1))
    if values.numel() and int(values.min()) == reserved:
        raise ValueError(
            f'packed data contains the reserved {bits}-bit code for '
            f'{reserved}, which is outside the narrow grid; the data is '
            'corrupted or was not written by pack_int')
    return values
