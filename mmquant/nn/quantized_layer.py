"""The module that replaces a quantized conv/linear/attention layer."""
import copy
from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from mmquant.core.activation import fake_quantize_activation
from mmquant.core.grid import check_bits, qmax
from .layer_kinds import (QUANTIZABLE, conv2d_weight, layer_kind,
                          layer_weight, out_channels, weight_name)


class QuantizedLayer(nn.Module):
    """A quantized ``nn.Conv2d``/``nn.Conv1d``/``nn.ConvTranspose2d``/
    ``nn.Linear`` (or any subclass of them), or the input projection
    (``in_proj_weight``) of an ``nn.MultiheadAttention``.

    The layer's float weight is replaced by per-output-channel integers
    ``qweight`` (``int8`` storage, values in ``[-qmax, qmax]``) and scales
    ``weight_scale``; its input is fake-quantized per tensor with
    ``act_scale`` when ``a_bits`` is set.  The wrapped module keeps its own
    ``forward`` (a conv that pads inside ``forward`` still does), its bias
    and its hyper-parameters; its ``weight`` becomes a non-persistent
    buffer holding ``qweight * weight_scale``, recomputed whenever the
    integers are loaded, so the module computes with exactly the
    dequantized integers.  Attributes the wrapped module has
    (``out_channels``, ``bias``, ``weight`` ...) read through the wrapper,
    so code that inspects the layer keeps working.

    Persistent state: ``qweight``, ``weight_scale``, ``act_scale`` and the
    wrapped module's other parameters and buffers (``layer.bias``).

    The scales are stored as ``float32`` whatever the model's dtype; the
    wrapped module computes in ``compute_dtype`` (the float layer's weight
    dtype unless ``dtype`` is given): its weight is ``qweight *
    weight_scale`` evaluated exactly and rounded once to that dtype, and a
    fake-quantized input keeps the input's dtype.

    Args:
        layer (nn.Module): The float layer (see
            :data:`~mmquant.nn.layer_kinds.QUANTIZABLE`); it is
            deep-copied, the original is left untouched.
        qweight (Tensor): Integer weights, shape of ``layer.weight``
            (``layer.in_proj_weight`` for an attention).
        weight_scale (Tensor): Positive per-output-channel scales ``(M,)``
            (``M`` output channels; for a ``ConvTranspose2d`` weight
            ``(C, M/G, kh, kw)`` the scale of output channel
            ``g * M/G + m`` multiplies ``weight[g * C/G:(g + 1) * C/G,
            m]``).
        w_bits (int): Weight bits, 2..8.
        a_bits (int, optional): Input activation bits, or ``None`` to keep
            the input float.
        act_scale (float, optional): Input scale; required with
            ``a_bits``.
        act_signed (bool): Signed (narrow symmetric) or unsigned input
            grid.
        dtype (torch.dtype, optional): Floating dtype the wrapped module
            computes in; its floating parameters and buffers are cast to
            it.  ``None`` keeps the dtype of the layer's weight.
    """

    def __init__(self,
                 layer: nn.Module,
                 qweight: Tensor,
                 weight_scale: Tensor,
                 w_bits: int,
                 a_bits: Optional[int] = None,
                 act_scale: Optional[float] = None,
                 act_signed: bool = False,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        if not isinstance(layer, QUANTIZABLE + (nn.MultiheadAttention, )):
            raise TypeError('QuantizedLayer wraps nn.Conv2d, nn.Conv1d, '
                            'nn.ConvTranspose2d, nn.Linear or '
                            'nn.MultiheadAttention, got '
                            f'{type(layer).__name__}')
        wname = weight_name(layer)
        if getattr(layer, wname, None) is None:
            raise TypeError(f'{type(layer).__name__} has no {wname} (an '
                            'nn.MultiheadAttention with kdim/vdim other '
                            'than embed_dim is not supported)')
        self.w_bits = check_bits(w_bits, 'w_bits')
        self.a_bits = None if a_bits is None else check_bits(a_bits,
                                                             'a_bits')
        if self.a_bits is not None and act_scale is None:
            raise ValueError('act_scale is required when a_bits is set')
        shape = tuple(getattr(layer, wname).shape)
        if tuple(qweight.shape) != shape:
            raise ValueError(f'qweight shape {tuple(qweight.shape)} does '
                             f'not match the layer weight {shape}')
        if qweight.is_floating_point() or qweight.is_complex():
            raise TypeError(f'qweight must be an integer tensor, got '
                            f'{qweight.dtype}')
        top = qmax(self.w_bits)
        if qweight.numel() and int(qweight.abs().max()) > top:
            raise ValueError(f'qweight exceeds the {self.w_bits}-bit range '
                             f'[-{top}, {top}]')
        channels = out_channels(layer)
        if weight_scale.numel() != channels:
            raise ValueError(f'weight_scale has {weight_scale.numel()} '
                             f'values, the layer {channels} output '
                             'channels')
        if dtype is None:
            dtype = getattr(layer, wname).dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f'dtype must be a floating torch.dtype, got '
                            f'{dtype!r}')
        self.compute_dtype = dtype
        self.act_signed = bool(act_signed)
        # every buffer on the wrapped layer's device (a CUDA model stays
        # on CUDA whatever device the solver returned the integers on)
        dev = getattr(layer, wname).device
        self.register_buffer('qweight',
                             qweight.detach().to(device=dev,
                                                 dtype=torch.int8))
        self.register_buffer(
            'weight_scale',
            weight_scale.detach().to(device=dev,
                                     dtype=torch.float32).reshape(channels))
        self.register_buffer(
            'act_scale',
            torch.tensor(1.0 if act_scale is None else float(act_scale),
                         dtype=torch.float32, device=dev))
        inner = copy.deepcopy(layer)
        delattr(inner, wname)
        inner.to(dtype)
        inner.register_buffer(wname, torch.empty(0, dtype=dtype),
                              persistent=False)
        self.layer = inner
        self.refresh_weight()
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def refresh_weight(self) -> None:
        """Recompute the wrapped layer's float weight from the integers.

        ``qweight * weight_scale`` is exact in float64 (an 8-bit integer
        times a float32 scale), so the weight is that product rounded once
        to ``compute_dtype``; for float32 it equals :func:`dequantize`.
        """
        kind = layer_kind(self.layer)
        groups = getattr(self.layer, 'groups', 1)
        q2d = conv2d_weight(self.qweight, kind, groups)
        scale = self.weight_scale.to(device=q2d.device, dtype=torch.float64)
        exact = q2d.to(torch.float64) * scale.reshape(
            (-1, ) + (1, ) * (q2d.dim() - 1))
        setattr(
            self.layer, weight_name(self.layer),
            layer_weight(exact, kind, groups).to(
                device=self.weight_scale.device,
                dtype=self.compute_dtype).contiguous())

    def _apply(self, fn: Any, recurse: bool = True) -> 'QuantizedLayer':
        """Apply ``fn`` (``.to()``, ``.half()`` ...), keeping the float32
        scales and recomputing the weight in the wrapped layer's new dtype.
        """
        kept = {
            name: self._buffers[name]
            for name in ('weight_scale', 'act_scale')
        }
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != torch.float32:
                self._buffers[name] = old.to(new.device)
        weight = getattr(self.layer, weight_name(self.layer))
        if weight.dtype != self.compute_dtype:
            self.compute_dtype = weight.dtype
            self.refresh_weight()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Fake-quantize the input (if ``a_bits``), then run the layer.

        See :meth:`quantize_inputs`.
        """
        args, kwargs = self.quantize_inputs(args, kwargs)
        return self.layer(*args, **kwargs)

    def quantize_inputs(self, args: tuple,
                        kwargs: dict) -> Tuple[tuple, dict]:
        """The inputs the wrapped layer is given: the first argument
        fake-quantized (if ``a_bits``); for an ``nn.MultiheadAttention``
        ``query``, ``key`` and ``value`` (positional or keyword),
        quantized with one shared scale (a tensor passed as two of them
        stays one tensor).

        Args:
            args (tuple): The module's positional inputs.
            kwargs (dict): Its keyword inputs.

        Returns:
            tuple: ``(args, kwargs)``, new containers where changed.
        """
        if self.a_bits is None:
            return args, kwargs
        n = 3 if isinstance(self.layer, nn.MultiheadAttention) else 1
        names = ('query', 'key', 'value') if n == 3 else ('input', )
        args = list(args)
        kwargs = dict(kwargs)
        done: dict = {}

        def quant(x: Any) -> Any:
            if not isinstance(x, Tensor):
                return x
            if id(x) not in done:
                done[id(x)] = fake_quantize_activation(
                    x, self.act_scale, self.a_bits, self.act_signed)
            return done[id(x)]

        for i in range(n):
            if i < len(args):
                args[i] = quant(args[i])
            elif names[i] in kwargs:
                kwargs[names[i]] = quant(kwargs[names[i]])
        return tuple(args), kwargs

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            layer = self._modules.get('layer')
            if layer is None:
                raise
            return getattr(layer, name)

    def extra_repr(self) -> str:
        grid = 'signed' if self.act_signed else 'unsigned'
        acts = 'float' if self.a_bits is None else (
            f'{self.a_bits} bits, {grid}, '
            f'scale={self.act_scale.item():.4g}')
        dtype = str(self.compute_dtype).replace('torch.', '')
        return f'w_bits={self.w_bits}, input={acts}, dtype={dtype}'


def _refresh_after_load(module: QuantizedLayer, incompatible: Any) -> None:
    module.refresh_weight()
