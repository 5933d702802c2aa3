"""Per-tensor activation scales and activation/weight fake quantization.

An activation tensor gets one scale ``s`` (no zero point), chosen by the
same alternating fixed point as the weights (:mod:`mmquant.core.rtn`):
``q = clip(round(x / s))``, ``s = <x, q> / <q, q>``, starting from
``s = max|x| / qmax``. Non-negative tensors (after ReLU) use the unsigned
grid ``0 .. 2^k - 1``, others the narrow signed grid
``-(2^(k-1) - 1) .. 2^(k-1) - 1``.
"""
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_finite
from .grid import check_bits
from .rtn import _alternate_sorted

__all__ = [
    'fit_activation_scale', 'fake_quantize_activation',
    'ActivationObserver', 'activation_grid'
]


def activation_grid(bits: int, signed: bool) -> Tuple[int, int]:
    """Integer range of the activation grid.

    Args:
        bits (int): Bit width, ``2..8``.
        signed (bool): Signed (narrow symmetric) or unsigned grid.

    Returns:
        tuple[int, int]: ``(lo, hi)``: ``(-(2^(k-1)-1), 2^(k-1)-1)`` or
        ``(0, 2^k - 1)``.
    """
    bits = check_bits(bits)
    if signed:
        top = 2**(bits - 1) - 1
        return -top, top
    return 0, 2**bits - 1


def _sorted_mse(srt: Tensor, c1: Tensor, c2: Tensor, scales: Tensor,
                top: int) -> Tensor:
    """Exact quantization MSE of sorted magnitudes for many scales.

    With ``srt`` sorted and the prefix sums ``c1`` of ``v`` and ``c2`` of
    ``v**2``, the values rounding to level ``k`` form one contiguous run,
    found by ``searchsorted``, and contribute
    ``S2 - 2 k s S1 + k**2 s**2 n``: ``O(top log n)`` per scale.

    Args:
        srt (Tensor): Sorted non-negative magnitudes ``(n,)``, float64.
        c1 (Tensor): ``(n + 1,)`` prefix sums of ``srt`` (leading zero).
        c2 (Tensor): ``(n + 1,)`` prefix sums of ``srt**2`` (leading zero).
        scales (Tensor): ``(S,)`` positive candidate scales.
        top (int): Largest grid level.

    Returns:
        Tensor: ``(S,)`` sums of squared errors.
    """
    k = torch.arange(1, top + 1, dtype=srt.dtype, device=srt.device)
    pos = torch.searchsorted(srt, (k - 0.5) * scales[:, None])
    zero = torch.zeros_like(pos[:, :1])
    end = torch.full_like(pos[:, :1], srt.numel())
    edges = torch.cat([zero, pos, end], dim=1)  # (S, top + 2)
    lo, hi = edges[:, :-1], edges[:, 1:]  # runs of levels 0..top
    n = (hi - lo).to(srt.dtype)
    s1 = c1[hi] - c1[lo]
    s2 = c2[hi] - c2[lo]
    levels = torch.arange(0, top + 1, dtype=srt.dtype, device=srt.device)
    sc = scales[:, None]
    return (s2 - 2 * levels * sc * s1 + (levels * sc)**2 * n).sum(dim=1)


def _fit_magnitudes(mag: Tensor, top: int, amax: float,
                    max_iter: int) -> float:
    """MSE-optimal scale of non-negative magnitudes ``mag`` (1-D).

    The alternating fixed point (``q = clip(round(v / s))``, then
    ``s = <v, q> / <q, q>``) converges slowly from ``amax / top`` on
    long-tailed activations (it clips a little more each step), so it is
    started from the best of 100 clipping ranges in ``(0, amax]``, each
    scored by its exact MSE on the sorted values; the alternation then
    only ever lowers the MSE.

    Args:
        mag (Tensor): Float64 magnitudes that the grid ``0..top`` represents.
        top (int): Largest grid level.
        amax (float): The largest magnitude (of all data seen).
        max_iter (int): Iteration cap of the alternation.

    Returns:
        float: The scale; ``1.0`` for all-zero data.
    """
    if amax <= 0 or mag.numel() == 0:
        return 1.0
    srt = mag.sort().values
    if float(srt[-1]) <= 0:
        return amax / top
    c1 = F.pad(srt.cumsum(0), (1, 0))
    c2 = F.pad((srt * srt).cumsum(0), (1, 0))
    cands = (amax / top) * torch.linspace(
        0.01, 1.0, 100, dtype=torch.float64, device=mag.device)
    best = cands[_sorted_mse(srt, c1, c2, cands, top).argmin()]
    scale = _alternate_sorted(srt[None], best.reshape(1), top, max_iter)
    pair = torch.stack([best, scale[0]])
    err = _sorted_mse(srt, c1, c2, pair, top)
    return float(pair[int(err.argmin())])


def fit_activation_scale(x: Tensor,
                         bits: int,
                         signed: Optional[bool] = None,
                         max_iter: int = 100) -> Tuple[float, bool]:
    """MSE-optimal per-tensor activation scale (alternating fixed point).

    Args:
        x (Tensor): Sample of the activation (any shape).
        bits (int): Bit width, ``2..8``.
        signed (bool, optional): Grid choice; ``None`` picks unsigned iff
            ``x.min() >= 0``.
        max_iter (int): Iteration cap of the alternation.

    Returns:
        tuple[float, bool]: The scale (finite, positive; ``1.0`` for an
        all-zero tensor, ``c / qmax`` for a constant ``c``) and whether
        the grid is signed.

    Raises:
        ValueError: On an invalid bit width, empty or non-finite ``x``.
    """
    bits = check_bits(bits)
    if x.numel() == 0:
        raise ValueError('cannot fit an activation scale on an empty tensor')
    v = x.detach().reshape(-1).to(torch.float64)
    check_finite(v, 'activation', 'cannot fit an activation scale')
    if signed is None:
        signed = bool(v.min() < 0)
    return _fit(v, bits, bool(signed), None, max_iter), bool(signed)


def _fit(v: Tensor, bits: int, signed: bool, amax: Optional[float],
         max_iter: int) -> float:
    """The scale of :func:`fit_activation_scale` for values ``v``."""
    lo, hi = activation_grid(bits, signed)
    mag = v.abs() if signed else v.clamp(min=0)
    if amax is None:
        amax = float(mag.max())
    return _fit_magnitudes(mag, hi, amax, max_iter)


def fake_quantize_activation(x: Tensor, scale: Union[float, Tensor],
                             bits: int, signed: bool) -> Tensor:
    """Quantize-dequantize an activation with one per-tensor scale.

    Args:
        x (Tensor): Activation tensor.
        scale (float | Tensor): Positive finite scale (float or 0-d tensor).
        bits (int): Bit width, ``2..8``.
        signed (bool): Signed (narrow symmetric) or unsigned grid.

    Returns:
        Tensor: ``clip(round(x / s), lo, hi) * s`` in ``x``'s dtype.
        Without autograd or tracing, the rounding, clipping and scaling
        run in place on the quotient (the same operations, no three
        temporaries of the activation's size).
    """
    lo, hi = activation_grid(bits, signed)
    s = float(scale)
    if not (s > 0 and s < float('inf')):
        raise ValueError(f'scale must be finite and positive, got {s}')
    q = x / s
    if (q.requires_grad or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export()):
        return torch.clamp(torch.round(q), lo, hi) * s
    return q.round_().clamp_(lo, hi).mul_(s)


class ActivationObserver:
    """Streaming activation statistics for :func:`fit_activation_scale`.

    Keeps the running min/max of everything seen and a bounded, seeded,
    (approximately) uniform random subsample of the values: when a batch
    does not fit, the kept set is re-drawn from the old sample and the new
    batch in proportion to the number of values each stands for.

    Args:
        max_samples (int): Most values kept. Defaults to ``1 << 20``.
        generator (torch.Generator, optional): CPU generator for the
            subsample (seed it for reproducibility).
    """

    def __init__(self,
                 max_samples: int = 1 << 20,
                 generator: Optional[torch.Generator] = None) -> None:
        if int(max_samples) <= 0:
            raise ValueError('max_samples must be positive')
        self.max_samples = int(max_samples)
        self.generator = generator
        self.samples = torch.empty(0, dtype=torch.float64)
        self.count = 0
        self.min = float('inf')
        self.max = float('-inf')

    def state(self) -> Dict[str, Any]:
        """A snapshot of the observer (kept values, counts and the
        generator's state), for :meth:`restore`.

        Returns:
            dict: The snapshot.
        """
        state = dict(vars(self))
        if self.generator is not None:
            state['_generator_state'] = self.generator.get_state()
        return state

    def restore(self, state: Dict[str, Any]) -> None:
        """Undo every update since :meth:`state` returned ``state``.

        Args:
            state (dict): A snapshot of this observer.
        """
        state = dict(state)
        gen_state = state.pop('_generator_state', None)
        vars(self).clear()
        vars(self).update(state)
        if gen_state is not None:
            self.generator.set_state(gen_state)

    def _take(self, v: Tensor, k: int) -> Tensor:
        """A seeded random subset of ``k`` values of ``v`` (all if fewer)."""
        if k >= v.numel():
            return v
        idx = torch.randperm(v.numel(), generator=self.generator)[:k]
        return v.index_select(0, idx.to(v.device))

    def update(self, x: Tensor) -> None:
        """Add a batch of activations.

        Args:
            x (Tensor): Activation tensor (any shape, any device).

        Raises:
            ValueError: If ``x`` contains NaN or Inf.
        """
        v = x.detach().reshape(-1)
        if v.numel() == 0:
            return
        check_finite(v, 'activation', 'cannot fit an activation scale')
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))
        # The kept samples live on the CPU (at most max_samples values;
        # the fit is a sort and a small grid search there, so scales are
        # identical for CPU and CUDA inputs); a CUDA batch is subsampled
        # on its device (CPU-drawn indices) and only the kept values are
        # copied, in float64 (exact for every floating input dtype).
        n_old, n_new = self.count, v.numel()
        self.count += n_new
        if self.samples.numel() + n_new <= self.max_samples:
            self.samples = torch.cat(
                [self.samples, v.to(device='cpu', dtype=torch.float64)])
            return
        k_new = round(self.max_samples * n_new / (n_old + n_new))
        k_new = min(k_new, n_new)
        k_old = min(self.max_samples - k_new, self.samples.numel())
        self.samples = torch.cat([
            self._take(self.samples, k_old),
            self._take(v, k_new).to(device='cpu', dtype=torch.float64)
        ])

    def fit(self,
            bits: int,
            signed: Optional[bool] = None) -> Tuple[float, bool]:
        """Fit the scale on the kept sample (range from all data seen).

        Args:
            bits (int): Bit width, ``2..8``.
            signed (bool, optional): Grid choice; ``None``: unsigned iff the
                running min is ``>= 0``.

        Returns:
            tuple[float, bool]: scale and signedness, as
            :func:`fit_activation_scale`.

        Raises:
            ValueError: If nothing was observed or ``bits`` is invalid.
        """
        bits = check_bits(bits)
        if self.count == 0:
            raise ValueError('ActivationObserver.fit called before update')
        if signed is None:
            signed = self.min < 0
        signed = bool(signed)
        amax = max(abs(self.min), abs(self.max)) if signed else max(
            self.max, 0.0)
        return _fit(self.samples, bits, signed, amax, 100), signed
