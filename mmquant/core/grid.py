"""Integer weight grids, bit planes and fake quantization.

mmquant quantizes weights per output channel to a symmetric, narrow signed
grid without zero point: a ``k``-bit integer lies in ``[-qmax, qmax]`` with
``qmax = 2**(k-1) - 1`` (W4: -7..7, W3: -3..3, W2: -1..1).

Such an integer is written as ``k - 1`` ternary *bit planes*
``b_j in {-1, 0, +1}`` (sign times magnitude bit), plane 0 being the most
significant::

    q = sum_{j=0}^{k-2} 2**(k-2-j) * b_j

:func:`split_planes` returns the canonical split (every non-zero bit carries
the sign of ``q``); :func:`stitch_planes` accepts any combination of ternary
planes, whose value always lies inside the same range.
"""
import operator

import torch
from torch import Tensor

__all__ = [
    'check_bits', 'qmax', 'split_planes', 'stitch_planes',
    'fake_quantize_weight', 'dequantize', 'plane_weights'
]

MIN_BITS = 2
MAX_BITS = 8


def check_bits(bits: int, name: str = 'bits') -> int:
    """Validate a bit width.

    Args:
        bits (int): The bit width; an integer (``bool`` and ``float`` are
            rejected) in ``2..8``.
        name (str): The name used in the error message.

    Returns:
        int: ``bits`` as a Python ``int``.

    Raises:
        ValueError: If ``bits`` is not an integer in ``2..8``.
    """
    msg = f'{name} must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}'
    if isinstance(bits, (bool, float)):
        raise ValueError(msg)
    try:
        value = operator.index(bits)
    except TypeError:
        raise ValueError(msg) from None
    if not MIN_BITS <= value <= MAX_BITS:
        raise ValueError(msg)
    return int(value)


def qmax(bits: int) -> int:
    """Largest integer of the narrow symmetric ``bits``-bit grid.

    Args:
        bits (int): The bit width, ``2..8``.

    Returns:
        int: ``2**(bits-1) - 1``.
    """
    bits = check_bits(bits)
    return 2**(bits - 1) - 1


def plane_weights(bits: int) -> list:
    """Integer weight of every bit plane, most significant first.

    Args:
        bits (int): The bit width, ``2..8``.

    Returns:
        list[int]: ``[2**(bits-2), ..., 2, 1]`` (``bits - 1`` entries).
    """
    bits = check_bits(bits)
    return [2**(bits - 2 - j) for j in range(bits - 1)]


def _check_integer_tensor(q: Tensor, name: str) -> None:
    """Refuse anything but an integer tensor (``TypeError``)."""
    if not isinstance(q, Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(q)}')
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f'{name} must be an integer tensor, got {q.dtype}')


def split_planes(q: Tensor, bits: int) -> Tensor:
    """Split integers into their canonical ternary bit planes.

    Args:
        q (Tensor): Integer tensor with values in
            ``[-qmax(bits), qmax(bits)]``.
        bits (int): The bit width, ``2..8``.

    Returns:
        Tensor: ``int8`` tensor of shape ``(bits - 1, *q.shape)`` with values
        in ``{-1, 0, 1}``; plane 0 is the most significant. Every non-zero
        bit carries the sign of ``q``.

    Raises:
        TypeError: If ``q`` is not an integer tensor.
        ValueError: If ``bits`` is invalid or ``q`` is out of range.
    """
    bits = check_bits(bits)
    _check_integer_tensor(q, 'q')
    top = qmax(bits)
    if q.numel() and (int(q.min()) < -top or int(q.max()) > top):
        raise ValueError(f'q must lie in [-{top}, {top}] for {bits} bits, '
                         f'got values in [{int(q.min())}, {int(q.max())}]')
    q32 = q.to(torch.int32)
    sign = torch.sign(q32)
    mag = q32.abs()
    planes = [((mag >> (bits - 2 - j)) & 1) * sign for j in range(bits - 1)]
    return torch.stack(planes).to(torch.int8)


def stitch_planes(planes: Tensor, bits: int) -> Tensor:
    """Stitch ternary bit planes back into integers.

    Exact inverse of :func:`split_planes`; any combination of ternary planes
    stitches to an integer in ``[-qmax(bits), qmax(bits)]``.

    Args:
        planes (Tensor): Integer tensor of shape ``(bits - 1, ...)`` with
            values in ``{-1, 0, 1}``, plane 0 most significant.
        bits (int): The bit width, ``2..8``.

    Returns:
        Tensor: ``int32`` tensor of shape ``planes.shape[1:]``.

    Raises:
        TypeError: If ``planes`` is not an integer tensor.
        ValueError: On a wrong number of planes or non-ternary values.
    """
    bits = check_bits(bits)
    _check_integer_tensor(planes, 'planes')
    if planes.dim() < 1 or planes.shape[0] != bits - 1:
        raise ValueError(f'planes must have shape ({bits - 1}, ...) for '
                         f'{bits} bits, got {tuple(planes.shape)}')
    p32 = planes.to(torch.int32)
    if p32.numel() and int(p32.abs().max()) > 1:
        raise ValueError('planes must contain only -1, 0 and 1')
    out = torch.zeros(planes.shape[1:], dtype=torch.int32,
                      device=planes.device)
    for j in range(bits - 1):
        out += p32[j] * (1 << (bits - 2 - j))
    return out


def _channel_view(scale: Tensor, ndim: int) -> Tensor:
    """``(M,)`` scales viewed to broadcast over an ``ndim`` weight."""
    return scale.reshape((-1, ) + (1, ) * (ndim - 1))


def _check_scale(scale: Tensor, channels: int) -> Tensor:
    """Per-channel scales (a scalar expanded), checked positive, finite."""
    scale = torch.as_tensor(scale)
    if scale.dim() == 0:
        scale = scale.reshape(1).expand(channels)
    if scale.dim() != 1 or scale.shape[0] != channels:
        raise ValueError(f'scale must have shape ({channels},), '
                         f'got {tuple(scale.shape)}')
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        raise ValueError('scale must be finite and positive')
    return scale


def fake_quantize_weight(weight: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Quantize and dequantize a weight per output channel (dim 0).

    Args:
        weight (Tensor): Float tensor ``(M, ...)``.
        scale (Tensor): Positive finite per-channel scales ``(M,)`` (or a
            scalar).
        bits (int): The bit width, ``2..8``.

    Returns:
        Tensor: ``clip(round(weight / scale), -qmax, qmax) * scale`` with
        ``weight``'s shape and dtype.
    """
    top = qmax(bits)
    scale = _check_scale(scale, weight.shape[0]).to(weight.device)
    s = _channel_view(scale.to(weight.dtype), weight.dim())
    return torch.clamp(torch.round(weight / s), -top, top) * s


def dequantize(qweight: Tensor, scale: Tensor) -> Tensor:
    """Turn per-channel integer weights back into floats.

    Args:
        qweight (Tensor): Integer tensor ``(M, ...)``.
        scale (Tensor): Per-channel scales ``(M,)``.

    Returns:
        Tensor: ``float32`` tensor ``qweight * scale`` (broadcast on dim 0).
    """
    _check_integer_tensor(qweight, 'qweight')
    scale = torch.as_tensor(scale)
    if scale.dim() != 1 or scale.shape[0] != qweight.shape[0]:
        raise ValueError(f'scale must have shape ({qweight.shape[0]},), '
                         f'got {tuple(scale.shape)}')
    s = _channel_view(scale.to(device=qweight.device, dtype=torch.float32),
                      qweight.dim())
    return qweight.to(torch.float32) * s
