"""Capture what a Conv2d/Linear layer really computes, with hooks only.

A forward pre-hook enters a :class:`torch.overrides.TorchFunctionMode`
for the duration of the layer's own ``forward``; the mode records the
``conv2d``/``linear`` call that uses the layer's weight: its input exactly
as the op sees it (after any padding the layer does inside ``forward``),
its stride/padding/dilation/groups and its output.  No ``torch.fx``
tracing, so any model works, including convs that override ``forward``.
"""
import contextlib
import inspect
import weakref
from dataclasses import dataclass
from typing import (Any, Callable, Dict, FrozenSet, Iterable, Iterator, List,
                    Mapping, Optional, Set, Tuple)

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from mmquant.core.checks import to_pair
from mmquant.nn.layer_kinds import (QUANTIZABLE, conv2d_weight, layer_kind,
                                    layer_weight, weight_name)

__all__ = [
    'QUANTIZABLE', 'NETWORK_INPUT', 'OpCall', 'StopForward', 'LayerCapture',
    'FlowTracker', 'attached', 'iter_tensors', 'conv2d_weight',
    'layer_kind', 'layer_weight', 'op_call', 'op_input_call'
]

_FUNCS = {
    'conv2d': (F.conv2d, torch.conv2d),
    'conv1d': (F.conv1d, torch.conv1d),
    'conv_transpose2d': (F.conv_transpose2d, torch.conv_transpose2d),
    'linear': (F.linear, ),
    'mha_in': (F.multi_head_attention_forward, ),
}
# The argument holding the layer's weight: (position, keyword).
_WEIGHT_ARG = {'mha_in': (5, 'in_proj_weight')}
_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


@dataclass
class OpCall:
    """One conv2d/linear call of a layer, as the op saw it.

    Args:
        module_input (Tensor): The first positional input of the module.
        op_input (Tensor): The op's input (after any padding).
        output (Tensor, optional): The op's output, bias removed
            (``None`` from :func:`op_input_call`, before the op runs).
        stride, padding, dilation (tuple): Conv geometry of the call
            (``padding`` is always explicit ``(ph, pw)``; ``(0, 0)`` for
            linear).
        groups (int): Conv groups (1 for linear).
    """

    module_input: Tensor
    op_input: Tensor
    output: Optional[Tensor]
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1


class StopForward(BaseException):
    """Raised from a hook to end a forward pass early.

    It derives from ``BaseException`` so that a model's own
    ``except Exception`` does not swallow it.
    """


def _arg(args: tuple, kwargs: dict, index: int, name: str,
         default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


class _OpRecorder(TorchFunctionMode):

    def __init__(self, weight: Tensor, kind: str,
                 sink: Callable[[Tensor, Tensor, dict], None]) -> None:
        super().__init__()
        self.weight = weight
        self.funcs = _FUNCS[kind]
        self.weight_arg = _WEIGHT_ARG.get(kind, (1, 'weight'))
        self.sink = sink
        self.seen = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in self.funcs and _arg(args, kwargs, *self.weight_arg,
                                       None) is self.weight:
            self.seen += 1
            self.sink(args, kwargs, out)
        return out


class LayerCapture:
    """Records every call of one layer while attached.

    A ``Conv1d`` or ``ConvTranspose2d`` call is recorded as the
    equivalent ``conv2d`` call (see :func:`conv2d_weight`): a ``Conv1d``
    input gets a height of 1, a ``ConvTranspose2d`` input is zero-inserted
    (stride) and padded (``dilation * (k - 1) - padding``, plus the output
    padding), to be convolved with stride 1.

    An ``nn.MultiheadAttention`` is recorded from its
    ``F.multi_head_attention_forward`` call (a torch function mode also
    keeps torch off the fused fast path): with ``part='in'`` as the
    grouped 1x1 conv of its input projection (three groups: rows of the
    query, key and value inputs, each against its third of
    ``in_proj_weight``; a row of one group is zero in the others), with
    ``part='out'`` as the linear call of ``out_proj`` on the attention
    output (recomputed with an identity output projection).

    Args:
        module (nn.Module): A layer of :data:`QUANTIZABLE` or an
            ``nn.MultiheadAttention``.
        on_call (callable): Called with an :class:`OpCall` per op call.
        after_forward (callable, optional): Called after each module call
            with the number of calls seen so far (e.g. to stop the forward
            pass early by raising :class:`StopForward`).
        part (str): For an ``nn.MultiheadAttention``: ``'in'`` (input
            projection) or ``'out'`` (``out_proj``). Defaults to ``'in'``.
    """

    def __init__(self, module: nn.Module,
                 on_call: Callable[[OpCall], None],
                 after_forward: Optional[Callable[[int], None]] = None,
                 part: str = 'in') -> None:
        if part not in ('in', 'out'):
            raise ValueError(f"part must be 'in' or 'out', got {part!r}")
        self.part = part
        self.module = module
        self.on_call = on_call
        self.after_forward = after_forward
        self.calls = 0
        self.missed = 0
        self._mode: Optional[_OpRecorder] = None
        self._input: Optional[Tensor] = None
        self._handles: List[Any] = []

    def __enter__(self) -> 'LayerCapture':
        self._handles = [
            self.module.register_forward_pre_hook(self._pre),
            self.module.register_forward_hook(self._post)
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._mode is not None:  # a forward ended by an exception
            self._mode.__exit__(None, None, None)
            self._mode = None

    def _pre(self, module: nn.Module, args: tuple) -> None:
        self._input = args[0] if args else None
        self._mode = _OpRecorder(getattr(module, weight_name(module)),
                                 layer_kind(module), self._sink)
        self._mode.__enter__()

    def _sink(self, args: tuple, kwargs: dict, out: Tensor) -> None:
        if layer_kind(self.module) == 'mha_in':
            call = self._attention_call(args, kwargs)
        else:
            call = op_call(self.module, self._input, args, kwargs, out)
        self.on_call(call)

    def _attention_call(self, args: tuple, kwargs: dict) -> OpCall:
        """The input or output projection of an attention call."""
        bound = _MHA_SIGNATURE.bind(*args, **kwargs).arguments
        weight = bound['in_proj_weight'].detach()
        dim = weight.shape[1]
        if self.part == 'out':
            out_w = bound['out_proj_weight'].detach()
            bound['out_proj_weight'] = torch.eye(
                dim, dtype=weight.dtype, device=weight.device)
            bound['out_proj_bias'] = None
            bound['need_weights'] = False
            # not seen by other captures of this module
            with torch._C.DisableTorchFunction():
                attn = F.multi_head_attention_forward(**bound)[0].detach()
            return OpCall(attn, attn, F.linear(attn, out_w))
        inputs = [bound[k].detach().reshape(-1, dim)
                  for k in ('query', 'key', 'value')]
        rows = sum(x.shape[0] for x in inputs)
        x = weight.new_zeros(rows, 3 * dim)
        y = weight.new_zeros(rows, 3 * dim)
        r0 = 0
        for g, part in enumerate(inputs):
            cols = slice(g * dim, (g + 1) * dim)
            x[r0:r0 + part.shape[0], cols] = part
            y[r0:r0 + part.shape[0], cols] = F.linear(part, weight[cols])
            r0 += part.shape[0]
        values = torch.cat([part.reshape(-1) for part in inputs])
        return OpCall(values, x[:, :, None, None], y[:, :, None, None],
                      groups=3)

    def _post(self, module: nn.Module, args: tuple, output: Any) -> None:
        mode, self._mode = self._mode, None
        mode.__exit__(None, None, None)
        self._input = None
        if mode.seen == 0:
            self.missed += 1
        self.calls += 1
        if self.after_forward is not None:
            self.after_forward(self.calls)


def op_call(module: nn.Module, module_input: Optional[Tensor], args: tuple,
            kwargs: dict, out: Optional[Tensor]) -> OpCall:
    """The :class:`OpCall` of one conv/linear op call of a layer (not of an
    attention).

    Args:
        module (nn.Module): The layer.
        module_input (Tensor, optional): The module's first input.
        args (tuple): The op's positional arguments.
        kwargs (dict): The op's keyword arguments.
        out (Tensor, optional): The op's output; ``None`` before it ran
            (the call's ``output`` is then ``None``).

    Returns:
        OpCall: The call (``Conv1d`` and ``ConvTranspose2d`` as the
        equivalent ``conv2d`` call, see :class:`LayerCapture`).
    """
    kind = layer_kind(module)
    y = None if out is None else out.detach()
    bias = _arg(args, kwargs, 2, 'bias', None)
    if y is not None and bias is not None:
        shape = {'linear': (-1, ), 'conv1d': (1, -1, 1)}.get(
            kind, (1, -1, 1, 1))
        y = y - bias.detach().reshape(shape)
    x = args[0].detach()
    if kind == 'linear':
        return OpCall(module_input, x, y)
    if kind == 'conv_transpose2d':
        return _transposed_call(module_input, x, y, args, kwargs, module)
    padding = _arg(args, kwargs, 4, 'padding', 0)
    stride = to_pair(_arg(args, kwargs, 3, 'stride', 1))
    dilation = to_pair(_arg(args, kwargs, 5, 'dilation', 1))
    if kind == 'conv1d':
        x = x.unsqueeze(2)
        y = None if y is None else y.unsqueeze(2)
        stride, dilation = (1, stride[0]), (1, dilation[0])
        if not isinstance(padding, str):
            padding = (0, to_pair(padding)[0])
    if isinstance(padding, str):
        x, padding = _explicit_padding(x, padding, module, dilation)
    return OpCall(module_input, x, y, stride, to_pair(padding), dilation,
                  int(_arg(args, kwargs, 6, 'groups', 1)))


class _OpReached(BaseException):
    """Ends :func:`op_input_call`'s run of a layer at its op."""

    def __init__(self, call: OpCall) -> None:
        super().__init__()
        self.call = call


class _OpStopper(TorchFunctionMode):

    def __init__(self, module: nn.Module, module_input: Tensor) -> None:
        super().__init__()
        self.module = module
        self.module_input = module_input
        self.weight = getattr(module, weight_name(module))
        self.funcs = _FUNCS[layer_kind(module)]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.funcs and _arg(args, kwargs, 1, 'weight',
                                       None) is self.weight:
            raise _OpReached(op_call(self.module, self.module_input, args,
                                     kwargs, None))
        return func(*args, **kwargs)


def op_input_call(module: nn.Module, args: tuple,
                  kwargs: dict) -> Optional[OpCall]:
    """What a conv/linear layer's op will be given, without running it.

    Runs the class's ``forward`` of ``module`` on ``(args, kwargs)`` up to
    the conv/linear op that uses its weight (padding done inside
    ``forward`` included) and stops there.

    Args:
        module (nn.Module): A layer of :data:`QUANTIZABLE`.
        args (tuple): The module's positional inputs.
        kwargs (dict): Its keyword inputs.

    Returns:
        OpCall, optional: The call with ``output=None``; ``None`` if the
        forward returned without using the weight in such an op.
    """
    x = args[0] if args else None
    try:
        with _OpStopper(module, x):
            type(module).forward(module, *args, **kwargs)
    except _OpReached as reached:
        return reached.call
    return None


def _explicit_padding(x: Tensor, padding: str, module: nn.Module,
                      dilation: Tuple[int, int]) -> Tuple[Tensor, tuple]:
    """Turn ``padding='same'|'valid'`` into an explicitly padded input."""
    if padding == 'valid':
        return x, (0, 0)
    kernel = tuple(module.weight.shape[2:])
    kh, kw = (1, kernel[0]) if len(kernel) == 1 else kernel
    pads = []
    for k, d in zip((kw, kh), (dilation[1], dilation[0])):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads), (0, 0)


#: The tag :class:`FlowTracker` gives to the network input.
NETWORK_INPUT = '<input>'


def iter_tensors(obj: Any, depth: int = 8) -> Iterator[Tensor]:
    """Yield the tensors of a nested structure.

    Tuples, lists, sets, dicts and objects with a ``__dict__`` (e.g.
    mmengine's data samples) are walked, ``depth`` levels deep; each object
    is visited once.

    Args:
        obj: Any value.
        depth (int): How deep containers are walked. Defaults to 8.

    Yields:
        Tensor: Every tensor found.
    """
    seen: Set[int] = set()

    def walk(item: Any, level: int) -> Iterator[Tensor]:
        if isinstance(item, Tensor):
            yield item
            return
        if level <= 0 or id(item) in seen or isinstance(
                item, (str, bytes, int, float, bool, type(None), nn.Module)):
            return
        seen.add(id(item))
        if isinstance(item, Mapping):
            values = list(item.values())
        elif isinstance(item, (tuple, list, set, frozenset)):
            values = list(item)
        elif hasattr(item, '__dict__') and not callable(item):
            values = list(vars(item).values())
        else:
            return
        for value in values:
            yield from walk(value, level - 1)

    yield from walk(obj, depth)


def _transposed_call(module_input: Tensor, x: Tensor, y: Tensor,
                     args: tuple, kwargs: dict,
                     module: nn.Module) -> OpCall:
    """A ``conv_transpose2d`` call as the equivalent ``conv2d`` call."""
    stride = to_pair(_arg(args, kwargs, 3, 'stride', 1))
    padding = to_pair(_arg(args, kwargs, 4, 'padding', 0))
    out_pad = to_pair(_arg(args, kwargs, 5, 'output_padding', 0))
    groups = int(_arg(args, kwargs, 6, 'groups', 1))
    dilation = to_pair(_arg(args, kwargs, 7, 'dilation', 1))
    kh, kw = module.weight.shape[-2:]
    B, C, H, W = x.shape
    sh, sw = stride
    z = x.new_zeros(B, C, (H - 1) * sh + 1, (W - 1) * sw + 1)
    z[:, :, ::sh, ::sw] = x
    ph = dilation[0] * (kh - 1) - padding[0]
    pw = dilation[1] * (kw - 1) - padding[1]
    z = F.pad(z, (pw, pw + out_pad[1], ph, ph + out_pad[0]))
    return OpCall(module_input, z, y, (1, 1), (0, 0), dilation, groups)


class FlowTracker(TorchFunctionMode):
    """Follows which layers each tensor of one forward pass comes from.

    While the mode is active, every torch function's tensor outputs get the
    union of the tags of its tensor inputs; :meth:`set_tags` gives a
    tensor its own tags (the engine tags the network input with
    :data:`NETWORK_INPUT` and each layer's output with the layer's name, so
    tags do not flow through a tracked layer).  A tensor's tags are then
    the tracked layers (or the network input) it is computed from without
    passing through another tracked layer.  Ops that torch functions do
    not see (the insides of custom C++ ops) and ops that only take the
    shape of their input (``new_zeros``, ``ones_like`` ...) do not
    propagate tags.
    """

    def __init__(self) -> None:
        super().__init__()
        self._tags: Dict[int, Tuple[Any, FrozenSet[str]]] = {}
        self._watched: Dict[int, str] = {}
        #: ``{name: [op, ...]}``: the ops that used a watched weight.
        self.used_by: Dict[str, List[str]] = {}

    def watch(self, weights: Mapping[int, str]) -> None:
        """Record which ops use some weights.

        Args:
            weights (Mapping[int, str]): ``{id(weight): name}``; the ops
                whose arguments hold one are listed in :attr:`used_by`.
        """
        self._watched = dict(weights)

    def tags(self, obj: Any) -> FrozenSet[str]:
        """The union of the tags of the tensors in ``obj``.

        Args:
            obj: A tensor or a nested structure of tensors.

        Returns:
            frozenset: The tags.
        """
        out: Set[str] = set()
        for t in iter_tensors(obj):
            entry = self._tags.get(id(t))
            if entry is not None and entry[0]() is t:
                out |= entry[1]
        return frozenset(out)

    def set_tags(self, obj: Any, tags: Iterable[str]) -> None:
        """Give every tensor of ``obj`` exactly ``tags``.

        Args:
            obj: A tensor or a nested structure of tensors.
            tags (Iterable[str]): The tags.
        """
        tags = frozenset(tags)
        for t in iter_tensors(obj):
            self._tags[id(t)] = (weakref.ref(t), tags)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._watched:
            for t in iter_tensors((args, kwargs), depth=2):
                name = self._watched.get(id(t))
                if name is not None:
                    self.used_by.setdefault(name, []).append(
                        getattr(func, '__name__', str(func)))
        name = getattr(func, '__name__', '')
        if name.startswith('new_') or name.endswith('_like'):
            return out  # shape and dtype only, not the values
        tags = self.tags((args, kwargs))
        if tags:
            self.set_tags(out, tags)
        return out


@contextlib.contextmanager
def attached(captures: Iterable[LayerCapture]) -> Iterator[None]:
    """Attach several :class:`LayerCapture` for the duration of a block.

    Args:
        captures (Iterable[LayerCapture]): The captures to attach.
    """
    with contextlib.ExitStack() as stack:
        for cap in captures:
            stack.enter_context(cap)
        yield
