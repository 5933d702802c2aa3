"""Discovery and resolution: which layers a run quantizes, and how.

*Discovery* runs one forward pass with hooks and finds the
``nn.Conv2d``/``nn.Conv1d``/``nn.ConvTranspose2d``/``nn.Linear`` layers
(subclasses included) and supported ``nn.MultiheadAttention`` that run,
their forward order and calls per pass; it checks that each calls its own
op with its own weight (layers that do not, e.g. weight-standardised
convs, stay float and the report says why), and finds the input layers
(fed by the network input) and output layers (whose outputs reach the
returned tensors) with a :class:`~.capture.FlowTracker`. Every other
module with weights is listed with the reason it stays float.

*Resolution* turns the config into each layer's :class:`~.config.LayerSpec`
(``first_last_bits`` for the input and output layers, overrides, skips).
The result is one :class:`LayerPlan` per layer.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch
from torch import Tensor, nn

from mmquant.core.activation import ActivationObserver
from mmquant.core.stats import LayerGeometry, StatsAccumulator
from mmquant.nn.layer_kinds import weight_name
from mmquant.nn.module_utils import inside_quantized
from mmquant.nn.quantized_layer import QuantizedLayer
from .capture import (NETWORK_INPUT, QUANTIZABLE, FlowTracker, LayerCapture,
                      OpCall, attached, conv2d_weight, layer_kind,
                      layer_weight)
from .config import LayerSpec, QuantConfig
from .report import LayerReport

#: The forward order given to layers that never ran.
NEVER_RAN = 10**9


class LayerPlan:
    """One layer of the run.

    Discovery sets what the forward pass shows (name, module, forward
    order, calls per pass; for an attention, the host module and which
    projection); resolution sets :attr:`spec` (``None``: left float) and
    the report's role and notes; the calibration passes fill the
    statistics fields (``acc``, ``observer``, ``rows_per_call``, the
    sampling ``generator``, and in error-compensated mode the sampled row
    ``indices`` and float ``targets``).

    Args:
        name (str): Dotted name in the float model.
        module (nn.Module): The layer.
        order (int): Forward order of its first call (``NEVER_RAN``: never
            ran).
        host (str, optional): The ``nn.MultiheadAttention`` whose call is
            captured, for attention projections.
        part (str): ``'in'`` (``in_proj_weight``, or any plain layer) or
            ``'out'`` (``out_proj``).
    """

    def __init__(self, name: str, module: nn.Module, order: int,
                 host: Optional[str] = None, part: str = 'in') -> None:
        self.name = name
        self.module = module
        self.order = order
        # attention: the nn.MultiheadAttention whose call is captured and
        # which projection ('in': in_proj_weight, 'out': out_proj)
        self.host = host
        self.part = part
        self.calls = 0  # per forward pass
        self.missed = 0
        self.spec: Optional[LayerSpec] = None
        self.geometry: Optional[LayerGeometry] = None
        self.acc: Optional[StatsAccumulator] = None
        self.observer: Optional[ActivationObserver] = None
        self.rows_per_call: Optional[int] = None
        self.generator = torch.Generator()
        # error-compensated mode: sampled row indices and float targets
        self.indices: List[Optional[Tensor]] = []
        self.targets: List[Tensor] = []
        self.report = LayerReport(name=name, type=type(module).__name__)
        # sensitivity pass of a mixed-precision run: {bits: (qweight in
        # the layer's layout, scale)} at every candidate width
        self.candidates: Optional[Dict[int, Tuple[Tensor, Tensor]]] = None

    @property
    def linear(self) -> bool:
        return isinstance(self.module, nn.Linear)

    @property
    def kind(self) -> str:
        return layer_kind(self.module)

    def weight2d(self) -> Tensor:
        """The float weight of the layer's conv2d/linear problem."""
        weight = getattr(self.module, weight_name(self.module))
        return conv2d_weight(weight.detach(), self.kind,
                             getattr(self.module, 'groups', 1))

    def own_weight(self, weight2d: Tensor) -> Tensor:
        """Integers of the conv2d/linear problem in the layer's layout."""
        return layer_weight(weight2d, self.kind,
                            getattr(self.module, 'groups', 1))


@dataclass
class Discovery:
    """What the discovery pass found.

    Args:
        layers (list[LayerPlan]): The layers that ran, in forward order,
            then those that did not and the other modules with weights
            (``order == NEVER_RAN``; the report explains each).
        fed_by_input (set[str]): Layers fed by the network input.
        produce_output (set[str]): Layers whose outputs reach the
            returned tensors.
    """

    layers: List[LayerPlan]
    fed_by_input: Set[str]
    produce_output: Set[str]


def discover_layers(model: nn.Module, batch: Any,
                    forward: Callable[[Any], Any]) -> Discovery:
    """Run ``forward(batch)`` once with hooks and list the layers.

    Args:
        model (nn.Module): The model ``forward`` runs.
        batch: The first calibration batch.
        forward (callable): Runs the model on a batch.

    Returns:
        Discovery: The layers and the input/output layer names.

    Raises:
        ValueError: If the model has no quantizable layer or none ran.
    """
    candidates = _candidates(model)
    if not candidates:
        raise ValueError(
            f'{type(model).__name__} has no nn.Conv2d, nn.Conv1d, '
            'nn.ConvTranspose2d, nn.Linear or nn.MultiheadAttention '
            'layer to quantize')
    others = _other_weighted(model)
    other_calls = {name: 0 for name, _ in others}
    seen: Dict[str, Tuple[int, int, int]] = {}
    counter = [0]
    captures = []
    tracker = FlowTracker()
    fed: set = set()
    handles = []
    for name, module in candidates:
        def note(call: OpCall, name: str = name) -> None:
            if name not in seen:
                seen[name] = (counter[0], 0, 0)
                counter[0] += 1
        captures.append((name, LayerCapture(module, note)))

        def pre(module: nn.Module, args: tuple, kwargs: dict,
                name: str = name) -> None:
            if NETWORK_INPUT in tracker.tags(_layer_inputs(
                    module, args, kwargs)):
                fed.add(name)

        def post(module: nn.Module, args: tuple, output: Any,
                 name: str = name) -> None:
            if isinstance(module, nn.MultiheadAttention):
                name = f'{name}.out_proj'  # makes the output
            tracker.set_tags(output, (name, ))
        handles += [module.register_forward_pre_hook(pre,
                                                     with_kwargs=True),
                    module.register_forward_hook(post)]
    for name, module in others:
        def count(module: nn.Module, args: tuple, output: Any,
                  name: str = name) -> None:
            other_calls[name] += 1
        handles.append(module.register_forward_hook(count))
    watched = {id(getattr(m, weight_name(m))): name
               for name, m in candidates}
    for name, module in others:
        for param in module.parameters(recurse=False):
            watched.setdefault(id(param), name)
    tracker.watch(watched)
    try:
        with attached(cap for _, cap in captures), tracker:
            tracker.set_tags(batch, (NETWORK_INPUT, ))
            result = forward(batch)
            produced = tracker.tags(result) - {NETWORK_INPUT}
    finally:
        for handle in handles:
            handle.remove()
    states = []
    late = []
    for name, module in candidates:
        cap = dict(captures)[name]
        if name in seen:
            state = LayerPlan(name, module, seen[name][0])
            state.calls = cap.calls
            state.missed = cap.missed
            states.append(state)
            if isinstance(module, nn.MultiheadAttention):
                state.host = name
                out = LayerPlan(f'{name}.out_proj', module.out_proj,
                                seen[name][0], host=name, part='out')
                out.calls, out.missed = cap.calls, cap.missed
                states.append(out)
        else:
            state = LayerPlan(name, module, NEVER_RAN)
            state.calls = cap.calls
            if cap.calls:
                state.report.note = (
                    'its forward never calls conv2d/linear with its own '
                    'weight (e.g. a transformed weight): left float')
            else:
                state.report.note = _uncalled_note(
                    model, name, tracker.used_by.get(name))
            late.append(state)
            if isinstance(module, nn.MultiheadAttention):
                if cap.calls:
                    state.report.note = (
                        'its forward never calls '
                        'F.multi_head_attention_forward with its own '
                        'in_proj_weight: left float')
                out = LayerPlan(f'{name}.out_proj', module.out_proj,
                                NEVER_RAN)
                out.calls = cap.calls
                out.report.note = (
                    'quantized with its nn.MultiheadAttention '
                    f'{name!r}, which was left float: left float')
                late.append(out)
    states.sort(key=lambda s: (s.order, s.part == 'out'))
    for state in states:
        if state.missed:
            state.report.note = (
                f'{state.missed} of {state.calls} calls did not run its '
                'op with its own weight: left float')
    if not states:
        raise ValueError(
            'no nn.Conv2d/nn.Conv1d/nn.ConvTranspose2d/nn.Linear layer '
            f'of {type(model).__name__} ran during the calibration '
            'forward pass; check forward_fn')
    for name, module in others:
        state = LayerPlan(name, module, NEVER_RAN)
        state.calls = other_calls[name]
        state.report.calls = other_calls[name]
        state.report.note = _unsupported_note(
            module, other_calls[name], tracker.used_by.get(name))
        late.append(state)
    return Discovery(states + late, fed, set(produced))


def resolve_layers(discovery: Discovery, config: QuantConfig) -> None:
    """Set every runnable layer's spec, role and notes from the config.

    Args:
        discovery (Discovery): The discovered layers (modified).
        config (QuantConfig): The run's config.

    Raises:
        ValueError: If a skip or override pattern matches no layer.
    """
    runnable = [s for s in discovery.layers
                if s.order < NEVER_RAN and not s.missed]
    names = [s.name for s in runnable]
    inputs = [n for n in names if n in discovery.fed_by_input]
    outputs = [n for n in names if n in discovery.produce_output]
    if not inputs and names:
        inputs = names[:1]
    if not outputs and names:
        outputs = names[-1:]
    for state in runnable:
        roles = [role for role, members in (('input', inputs),
                                            ('output', outputs))
                 if state.name in members]
        state.report.role = '+'.join(roles) or None
    specs = config.resolve(names, inputs, outputs)
    for state in runnable:
        state.spec = specs[state.name]
        if state.spec is None:
            state.report.note = 'skipped by config: left float'
        elif state.part == 'out' and state.spec.a_bits is not None:
            state.spec = LayerSpec(state.spec.w_bits, None)
            state.report.note = (
                'input kept float: the attention output reaches '
                'out_proj inside F.multi_head_attention_forward')


def _uncalled_note(model: nn.Module, name: str,
                   ops: Optional[List[str]]) -> str:
    """Why a quantizable layer that never ran itself stays float."""
    if not ops:
        return 'not called by the forward pass: left float'
    parent_name = name.rpartition('.')[0]
    parent = model.get_submodule(parent_name)
    by = ', '.join(sorted(set(ops)))
    if isinstance(parent, nn.MultiheadAttention):
        return (f'never called itself: its weight is used by {by} of '
                f'the parent nn.MultiheadAttention {parent_name!r}, '
                'which mmquant leaves float (see its note): left float')
    return (f'never called itself: its weight is used by {by} of '
            'another module, which mmquant does not quantize: left '
            'float')


def _supported_attention(module: nn.Module) -> bool:
    return (isinstance(module, nn.MultiheadAttention)
            and module._qkv_same_embed_dim
            and module.in_proj_weight is not None
            and isinstance(module.out_proj, nn.Linear))


def _candidates(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The quantizable layers of a model, outside QuantizedLayers: convs,
    linears and the (supported) nn.MultiheadAttention, whose out_proj is
    quantized with it."""
    out = []
    attention = set()
    for name, module in model.named_modules():
        if not name or inside_quantized(model, name):
            continue
        if _supported_attention(module):
            attention.add(name)
            out.append((name, module))
        elif isinstance(module, QUANTIZABLE) and not (
                name.rpartition('.')[0] in attention
                and name.endswith('.out_proj')):
            out.append((name, module))
    return out


def _layer_inputs(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """What a layer's input is: query/key/value of an attention, else the
    first argument."""
    if isinstance(module, nn.MultiheadAttention):
        names = ('query', 'key', 'value')
        return list(args[:3]) + [kwargs[k] for k in names if k in kwargs]
    if args:
        return args[0]
    return next(iter(kwargs.values()), None)


def runtime_name(model: nn.Module, name: str) -> str:
    """The dotted name of ``name`` now: through ``.layer`` of the
    QuantizedLayers already swapped in on its way."""
    parts = []
    module = model
    for part in name.split('.'):
        if isinstance(module, QuantizedLayer):
            parts.append('layer')
            module = module.layer
        parts.append(part)
        module = getattr(module, part)
    return '.'.join(parts)


def _other_weighted(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Modules with weights mmquant does not quantize, to report.

    A module *has weights* when it directly owns a floating-point parameter
    of two or more dimensions (norm layers, whose parameters are 1-D
    per-channel affine terms, and biases do not count). Quantizable layers
    (:data:`QUANTIZABLE`), :class:`QuantizedLayer` and the modules inside
    one are not listed.
    """
    out = []
    for name, module in model.named_modules():
        if (not name or isinstance(module, (QuantizedLayer, ) + QUANTIZABLE)
                or _supported_attention(module)
                or inside_quantized(model, name)):
            continue
        if any(p.is_floating_point() and p.dim() >= 2
               for p in module.parameters(recurse=False)):
            out.append((name, module))
    return out


_SUPPORTED = 'mmquant quantizes nn.Conv1d/Conv2d/ConvTranspose2d/Linear'


def _unsupported_note(module: nn.Module, calls: int,
                      used_by: Optional[List[str]] = None) -> str:
    """Why a module with weights of an unsupported kind stays float."""
    if calls:
        ran = f'ran {calls} time(s) per pass'
    elif used_by:
        ran = ('never called itself; its weights are used by '
               f'{", ".join(sorted(set(used_by)))}')
    else:
        ran = 'not called by the forward pass'
    mro = {cls.__name__ for cls in type(module).__mro__}
    if mro & {'DeformConv2d', 'ModulatedDeformConv2d'}:
        why = ('deformable conv: its sampling offsets are data-dependent '
               "and it runs mmcv's own C++ op; " + _SUPPORTED)
    elif isinstance(module, nn.MultiheadAttention):
        why = ('nn.MultiheadAttention with separate q/k/v projection '
               'weights (kdim/vdim other than embed_dim): mmquant '
               'quantizes only a packed in_proj_weight')
    elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        why = f'{type(module).__name__}: a lookup table, not a matmul'
    else:
        why = f'{type(module).__name__}: {_SUPPORTED} weights only'
    return f'{why} ({ran}): left float'
