"""``mmquant.quantize``: BitSplit PTQ of any ``nn.Module``.

The run, for a model and a few calibration batches:

1. *Discovery*: one forward pass with hooks finds the ``nn.Conv2d``,
   ``nn.Conv1d``, ``nn.ConvTranspose2d`` and ``nn.Linear`` layers
   (subclasses included) that run, their forward order and how often each
   runs per pass, checks that each calls its own op with its own weight
   (layers that do not, e.g. weight-standardised convs, stay float and the
   report says why), and finds the input and output layers (a
   :class:`~.capture.FlowTracker` follows which layers each tensor comes
   from). Every other module with weights is reported with the reason it
   stays float.
2. *Statistics*: per layer ``A = X^T X``, ``C = X^T Y``, ``sum y^2`` from
   the op's real inputs (im2col with the call's own geometry) and its float
   outputs; rows are sampled with a seeded generator.
   - fast mode: one float pass for all layers;
   - error-compensated mode (the paper's Algorithm 1): float targets from
     one float pass, then layer by layer, in forward order, inputs from the
     network whose earlier layers are already quantized (weights and
     activations, the layer's own input quantizer applied); each pass
     starts at the nearest module boundary whose cached inputs are valid
     (:mod:`.replay`; else at the network input) and stops as soon as the
     layer has run.
3. *Solve* (BitSplit from ``(A, C)``), swap in :class:`QuantizedLayer`.
4. Optionally re-estimate BatchNorm statistics.

A module that runs more than once per pass gets statistics from all its
calls (one set of integers serves every call).
"""
import contextlib
import copy
import dataclasses
import math
import time
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sequence, Tuple, Union)

import torch
from torch import Tensor, nn

from mmquant.core.activation import (ActivationObserver,
                                     fake_quantize_activation)
from mmquant.core.rtn import mse_rtn, mse_rtn_float64
from mmquant.core.solver import solve_layer
from mmquant.core.stats import LayerGeometry, StatsAccumulator
from mmquant.nn.layer_kinds import weight_name
from mmquant.nn.module_utils import inside_quantized, set_submodule
from mmquant.nn.quantized_layer import QuantizedLayer
from .capture import (NETWORK_INPUT, QUANTIZABLE, FlowTracker, LayerCapture,
                      OpCall, StopForward, conv2d_weight, layer_kind,
                      layer_weight)
from .config import LayerSpec, QuantConfig
from .distributed import DistributedCalibration
from .journal import LayerJournal
from .mixed_precision import allocation_overrides, plan_mixed_precision
from .progress import CostEta
from .replay import Boundary, BoundaryReplay, CacheMiss
from .report import LayerReport, QuantReport

ForwardFn = Callable[[nn.Module, Any], Any]

#: Exponents of the error-compensated ETA's cost model (see
#: :class:`~.progress.CostEta`): a layer's seconds in a phase are taken as
#: ``rate * work ** alpha`` (work: see ``_Run._ec_work``). Chosen on the
#: per-layer, per-phase seconds of torchvision ResNet-18 (21 layers) and
#: MobileNetV2 (53), 16 images at 112 and at 224 px, W4A8, measured on the
#: 2-core CPU: statistics time follows the im2col size, solver time grows
#: more slowly than ``M * N**2`` (fixed costs weigh on small layers). On
#: those four runs the predicted time left was within a factor 1.5 of the
#: true one after a quarter, half and three quarters of the layers, where
#: the plain average was off by up to a factor 4.
_ETA_EXPONENTS = dict(forward=1.0, statistics=1.0, solver=0.7)
Logger = Callable[[str], None]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on one calibration batch.

    A tensor is passed as the only argument, a tuple/list as positional
    arguments and a dict as keyword arguments.

    Args:
        model (nn.Module): The model.
        batch: One calibration batch.

    Returns:
        The model's output.

    Raises:
        TypeError: If the model rejects a tuple/list batch (e.g. the
            ``(input, label)`` pairs of a plain ``DataLoader``); the
            message names the ``forward_fn`` to pass and the original error
            is its ``__cause__``.
    """
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)):
        try:
            return model(*batch)
        except TypeError as e:
            raise TypeError(
                f'calling {type(model).__name__} with the {len(batch)} '
                f'elements of a {type(batch).__name__} calibration batch as '
                f'positional arguments failed: {e}. A DataLoader over '
                '(input, label) pairs yields such batches; pass '
                'forward_fn=lambda m, b: m(b[0]) to mmquant.quantize to '
                'feed the input only') from e
    if isinstance(batch, Mapping):
        return model(**batch)
    raise TypeError('a calibration batch must be a Tensor, tuple, list or '
                    f'dict, got {type(batch).__name__}; pass forward_fn= '
                    'to feed other batch types to the model')


def quantize(model: nn.Module,
             calib_data: Iterable[Any],
             config: Union[QuantConfig, Mapping[str, Any], None] = None,
             forward_fn: Optional[ForwardFn] = None,
             inplace: bool = False,
             logger: Optional[Logger] = None,
             journal: Optional[LayerJournal] = None
             ) -> Tuple[nn.Module, QuantReport]:
    """Quantize the conv/linear layers of any model with BitSplit.

    ``nn.Conv2d``, ``nn.Conv1d``, ``nn.ConvTranspose2d`` and ``nn.Linear``
    (and subclasses) are quantized; ``first_last_bits`` goes to the input
    layers (fed by the network input) and the output layers (whose outputs
    reach the tensors ``forward_fn`` returns), see :class:`QuantConfig`.

    Args:
        model (nn.Module): A float model. It is run in eval mode.
        calib_data (Iterable): Calibration batches. How a batch reaches the
            model is up to ``forward_fn``.
        config (QuantConfig | dict, optional): The run's configuration
            (a dict is validated by :meth:`QuantConfig.from_dict`).
            Defaults to ``QuantConfig()`` (W4A8, error-compensated).
        forward_fn (callable, optional): ``forward_fn(model, batch)`` runs
            the model on one batch. Defaults to :func:`default_forward`.
        inplace (bool): Quantize ``model`` itself instead of a deep copy.
            Defaults to False.
        logger (callable, optional): Receives progress messages; defaults
            to mmengine's current logger when mmengine is importable, else
            ``print``.
        journal (LayerJournal, optional): Records every solved layer
            (BitSplit, fast or error-compensated) and, for a layer it
            already holds, swaps in the recorded integers and scales
            instead of solving it again (resuming an interrupted run,
            see :mod:`.journal`). With ``target_bits`` it serves the
            final run only. Defaults to None (no journal).

    Returns:
        tuple: The quantized model (its quantized layers replaced by
        :class:`~mmquant.nn.QuantizedLayer`) and the :class:`QuantReport`.

    Raises:
        ValueError: For an empty ``calib_data``, a model without runnable
            quantizable layers, a pattern that matches no layer, or a bad
            config.
        TypeError: For calibration batches of mixed types.
    """
    if config is None:
        config = QuantConfig()
    elif isinstance(config, Mapping):
        config = QuantConfig.from_dict(config)
    elif not isinstance(config, QuantConfig):
        raise TypeError('config must be a QuantConfig or a dict, got '
                        f'{type(config).__name__}')
    forward_fn = forward_fn or default_forward
    logger = logger or _default_logger()
    if config.target_bits is not None:
        return _quantize_mixed(model, calib_data, config, forward_fn,
                               inplace, logger, journal)
    run = _Run(model if inplace else copy.deepcopy(model), config,
               forward_fn, logger)
    run.journal = journal
    return run.execute(calib_data)


def _collect_batches(calib_data: Iterable[Any],
                     limit: Optional[int]) -> Tuple[List[Any], int]:
    """The calibration batches, up to ``limit`` samples, as a list.

    Args:
        calib_data (Iterable): The batches (may be a one-shot iterator).
        limit (int, optional): Stop once this many samples are taken.

    Returns:
        tuple: The batches and their number of samples.

    Raises:
        TypeError: For batches of mixed types.
        ValueError: For no batch at all.
    """
    batches: List[Any] = []
    count = 0
    first_type = None
    for batch in calib_data:
        kind = type(batch)
        if first_type is None:
            first_type = kind
        elif not (isinstance(batch, first_type)
                  or issubclass(first_type, kind)):
            raise TypeError(
                'calibration batches must all have one type: batch '
                f'{len(batches)} is {kind.__name__}, the first was '
                f'{first_type.__name__}')
        batches.append(batch)
        count += _batch_size(batch)
        if limit is not None and count >= limit:
            break
    if not batches:
        raise ValueError('calib_data is empty: quantization needs at '
                         'least one calibration batch')
    return batches, count


def _quantize_mixed(model: nn.Module, calib_data: Iterable[Any],
                    config: QuantConfig, forward_fn: ForwardFn,
                    inplace: bool, logger: Logger,
                    journal: Optional[LayerJournal] = None
                    ) -> Tuple[nn.Module, QuantReport]:
    """``target_bits``: a fast-mode sensitivity pass, the allocation,
    then the configured run with the chosen per-layer widths."""
    # calib_data may be a one-shot iterator: both runs use one list
    batches, _ = _collect_batches(calib_data, config.calib_samples)
    probe = _Run(copy.deepcopy(model), dataclasses.replace(
        config, error_compensation=False, sensitivity=True,
        target_bits=None, bn_reestimation=False), forward_fn, logger)
    logger('mmquant: mixed precision: sensitivity pass (fast mode) at '
           f'widths {config.candidate_bits}')
    _, sens = probe.execute(batches)
    params = {s.name: s.weight2d().numel() for s in probe.layers}
    plan = plan_mixed_precision(sens, config, params)
    logger(f'mmquant: mixed precision: {plan.average_bits:.3f} bits per '
           f'weight (target {plan.target_bits}); widths '
           f'{sorted(plan.bits.items())}')
    final = dataclasses.replace(config, target_bits=None,
                                overrides=allocation_overrides(plan, config))
    run = _Run(model if inplace else copy.deepcopy(model), final,
               forward_fn, logger)
    run.journal = journal
    qmodel, report = run.execute(batches)
    report.config = config.to_dict()
    report.extra['mixed_precision'] = plan.to_dict()
    probed_layers = {r.name: r for r in sens.layers}
    for rep in report.layers:
        probed = probed_layers.get(rep.name)
        if probed is not None and probed.sensitivity is not None:
            rep.sensitivity = probed.sensitivity
    report.timing['sensitivity_pass'] = sens.timing['total']
    report.timing['total'] = round(
        report.timing['total'] + sens.timing['total'], 4)
    return qmodel, report


def _default_logger() -> Logger:
    try:
        from mmengine.logging import MMLogger
    except ImportError:  # pragma: no cover - mmengine is a dependency
        return print
    logger = MMLogger.get_current_instance()
    return logger.info


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.dim() else 1
    items: Sequence[Any] = ()
    if isinstance(batch, (tuple, list)):
        items = batch
    elif isinstance(batch, Mapping):
        items = list(batch.values())
    for item in items:
        if isinstance(item, Tensor) and item.dim():
            return item.shape[0]
    return 1


class _LayerState:
    """Calibration state of one quantizable layer."""

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


class _Run:

    def __init__(self, model: nn.Module, config: QuantConfig,
                 forward_fn: ForwardFn, log: Logger) -> None:
        self.model = model
        self.cfg = config
        self.forward_fn = forward_fn
        self.log = log
        self.timing: Dict[str, float] = dict(
            forward=0.0, statistics=0.0, solver=0.0, activations=0.0,
            bn=0.0)
        self.batches: List[Any] = []
        self.layers: List[_LayerState] = []
        self.replay_info: Dict[str, Any] = {}
        self.journal: Optional[LayerJournal] = None
        # distributed: inside a process group of several ranks, the hooks
        # marked 'distributed' call it (see .distributed); None alone
        self.dist = DistributedCalibration.current()

    # ----------------------------------------------------------------- run
    def execute(self, calib_data: Iterable[Any]
                ) -> Tuple[nn.Module, QuantReport]:
        if self.dist is not None:  # distributed: one rank fails them all
            return self.dist.guard(lambda: self._execute(calib_data))
        return self._execute(calib_data)

    def _execute(self, calib_data: Iterable[Any]
                 ) -> Tuple[nn.Module, QuantReport]:
        start = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        self._collect_batches(calib_data)
        with torch.no_grad():
            self._discover()
            self._resolve()
            active = [s for s in self.layers if s.spec is not None]
            if self.dist is not None:  # distributed: counts, shared draws
                self._prepare_distributed(active)
            mode = self._mode()
            self.log(f'mmquant: {self.cfg.method} {mode} W{self.cfg.w_bits}'
                     f'A{self.cfg.a_bits or "-"} on {len(active)} layers, '
                     f'{self.n_samples} calibration samples in '
                     f'{len(self.batches)} batches')
            if self.cfg.method == 'rtn':
                self._run_rtn(active)
            elif self.cfg.error_compensation:
                self._run_error_compensated(active)
            else:
                self._run_fast(active)
            if self.cfg.bn_reestimation:
                self._reestimate_bn()
        self.model.train(was_training)
        self.timing['total'] = time.perf_counter() - start
        report = QuantReport(
            config=self.cfg.to_dict(),
            mode=mode,
            layers=[s.report for s in self.layers],
            timing={k: round(v, 4) for k, v in self.timing.items()},
            calib_samples=self.n_samples,
            replay=self.replay_info)
        return self.model, report

    def _mode(self) -> str:
        if self.cfg.method == 'rtn':
            return 'rtn'
        return 'error_compensated' if self.cfg.error_compensation \
            else 'fast'

    def _collect_batches(self, calib_data: Iterable[Any]) -> None:
        self.batches, self.n_samples = _collect_batches(
            calib_data, self.cfg.calib_samples)
        if self.dist is not None:  # distributed: calib_samples of all
            self.batches, self.n_samples = self.dist.shard(
                self.batches, [_batch_size(b) for b in self.batches],
                self.cfg.calib_samples)

    def _prepare_distributed(self, active: List['_LayerState']) -> None:
        """Distributed: check the layers, count rows and values and share
        the row draws and observers (see :mod:`.distributed`)."""
        if self.journal is not None or self.cfg.bn_reestimation:
            raise ValueError('a distributed calibration supports neither '
                             'a resume journal nor bn_reestimation')
        self.dist.check_layers([
            (s.name, s.order, s.calls, s.missed, s.report.role, s.spec)
            for s in self.layers])
        self.dist.prepare(self, active, rows=self.cfg.method != 'rtn')

    def _forward(self, batch: Any) -> Any:
        """One (possibly early-stopped) forward pass; the time spent in
        the capture hooks is booked to statistics, not to forward.  Returns
        the output (``None`` when stopped early)."""
        t0 = time.perf_counter()
        hooks0 = self.timing['statistics'] + self.timing['activations']
        if getattr(self, '_batch_ids', None) is None:
            self._batch_ids = {id(b): i for i, b in enumerate(self.batches)}
        self._batch_index = self._batch_ids.get(id(batch))
        try:
            return self.forward_fn(self.model, batch)
        except StopForward:
            return None
        finally:
            hooks = self.timing['statistics'] + self.timing[
                'activations'] - hooks0
            self.timing['forward'] += time.perf_counter() - t0 - hooks

    # ----------------------------------------------------------- discovery
    def _discover(self) -> None:
        candidates = _candidates(self.model)
        if not candidates:
            raise ValueError(
                f'{type(self.model).__name__} has no nn.Conv2d, nn.Conv1d, '
                'nn.ConvTranspose2d, nn.Linear or nn.MultiheadAttention '
                'layer to quantize')
        others = _other_weighted(self.model)
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
            with _attached(cap for _, cap in captures), tracker:
                tracker.set_tags(self.batches[0], (NETWORK_INPUT, ))
                result = self._forward(self.batches[0])
                produced = tracker.tags(result) - {NETWORK_INPUT}
        finally:
            for handle in handles:
                handle.remove()
        self._fed_by_input = fed
        self._produce_output = set(produced)
        states = []
        late = []
        for name, module in candidates:
            cap = dict(captures)[name]
            if name in seen:
                state = _LayerState(name, module, seen[name][0])
                state.calls = cap.calls
                state.missed = cap.missed
                states.append(state)
                if isinstance(module, nn.MultiheadAttention):
                    state.host = name
                    out = _LayerState(f'{name}.out_proj', module.out_proj,
                                      seen[name][0], host=name, part='out')
                    out.calls, out.missed = cap.calls, cap.missed
                    states.append(out)
            else:
                state = _LayerState(name, module, 10**9)
                state.calls = cap.calls
                if cap.calls:
                    state.report.note = (
                        'its forward never calls conv2d/linear with its own '
                        'weight (e.g. a transformed weight): left float')
                else:
                    state.report.note = self._uncalled_note(
                        name, tracker.used_by.get(name))
                late.append(state)
                if isinstance(module, nn.MultiheadAttention):
                    if cap.calls:
                        state.report.note = (
                            'its forward never calls '
                            'F.multi_head_attention_forward with its own '
                            'in_proj_weight: left float')
                    out = _LayerState(f'{name}.out_proj', module.out_proj,
                                      10**9)
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
                f'of {type(self.model).__name__} ran during the calibration '
                'forward pass; check forward_fn')
        for name, module in others:
            state = _LayerState(name, module, 10**9)
            state.calls = other_calls[name]
            state.report.calls = other_calls[name]
            state.report.note = _unsupported_note(
                module, other_calls[name], tracker.used_by.get(name))
            late.append(state)
        self.layers = states + late

    def _uncalled_note(self, name: str, ops: Optional[List[str]]) -> str:
        """Why a quantizable layer that never ran itself stays float."""
        if not ops:
            return 'not called by the forward pass: left float'
        parent_name = name.rpartition('.')[0]
        parent = self.model.get_submodule(parent_name)
        by = ', '.join(sorted(set(ops)))
        if isinstance(parent, nn.MultiheadAttention):
            return (f'never called itself: its weight is used by {by} of '
                    f'the parent nn.MultiheadAttention {parent_name!r}, '
                    'which mmquant leaves float (see its note): left float')
        return (f'never called itself: its weight is used by {by} of '
                'another module, which mmquant does not quantize: left '
                'float')

    def _resolve(self) -> None:
        runnable = [s for s in self.layers
                    if s.order < 10**9 and not s.missed]
        names = [s.name for s in runnable]
        inputs = [n for n in names if n in self._fed_by_input]
        outputs = [n for n in names if n in self._produce_output]
        if not inputs and names:
            inputs = names[:1]
        if not outputs and names:
            outputs = names[-1:]
        for state in runnable:
            roles = [role for role, members in (('input', inputs),
                                                ('output', outputs))
                     if state.name in members]
            state.report.role = '+'.join(roles) or None
        specs = self.cfg.resolve(names, inputs, outputs)
        for state in runnable:
            state.spec = specs[state.name]
            if state.spec is None:
                state.report.note = 'skipped by config: left float'
            elif state.part == 'out' and state.spec.a_bits is not None:
                state.spec = LayerSpec(state.spec.w_bits, None)
                state.report.note = (
                    'input kept float: the attention output reaches '
                    'out_proj inside F.multi_head_attention_forward')
        for i, state in enumerate(self.layers):
            state.generator.manual_seed(self.cfg.seed * 1000003 + i)

    # ------------------------------------------------------------ sampling
    def _prepare(self, state: _LayerState, call: OpCall) -> None:
        """Create the layer's accumulator from its first call."""
        if state.acc is not None:
            return
        module = state.module
        if state.linear:
            geom = LayerGeometry.from_module(module)
        else:
            if state.kind == 'mha_in':
                # three groups (q, k, v); a row belongs to one group and
                # is zero in the others, so n_rows (and the damping's
                # N / rows) counts the rows of all three
                in_channels = out_channels = 3 * module.embed_dim
            else:
                in_channels = module.in_channels
                out_channels = module.out_channels
            geom = LayerGeometry(
                kind='conv',
                in_channels=in_channels,
                out_channels=out_channels,
                kernel_size=tuple(state.weight2d().shape[-2:]),
                stride=call.stride,
                padding=call.padding,
                dilation=call.dilation,
                groups=call.groups)
        state.geometry = geom
        try:
            state.acc = StatsAccumulator(
                geom, max_bytes=self.cfg.max_stats_bytes,
                device=call.op_input.device)
        except ValueError as err:
            raise ValueError(f'layer {state.name!r}: {err}') from None
        state.observer = self._observer(state)
        rows = self.cfg.rows_per_layer
        if rows is not None:
            n_batches = len(self.batches) if self.dist is None else \
                self.dist.num_batches  # distributed: of all ranks
            state.rows_per_call = max(
                1, math.ceil(rows / (n_batches * state.calls)))

    def _sample(self, state: _LayerState, total: int) -> Optional[Tensor]:
        if self.dist is not None:  # distributed: the shared draws
            return self.dist.sample(state, total)
        if state.rows_per_call is None or state.rows_per_call >= total:
            return None
        return torch.randperm(total, generator=state.generator)[
            :state.rows_per_call]

    # -------------------------------------------------------- fast mode
    def _run_fast(self, active: List[_LayerState]) -> None:
        def on_call(state: _LayerState) -> Callable[[OpCall], None]:
            def handle(call: OpCall) -> None:
                self._prepare(state, call)
                t0 = time.perf_counter()
                y = state.acc.output_rows(call.output)
                idx = self._sample(state, y.shape[0])
                # only the sampled rows are built (no full im2col)
                x = state.acc.input_rows(call.op_input, idx)
                if idx is not None:
                    y = y[idx]
                with _non_finite_where(state.name, self._batch_index,
                                       len(self.batches)):
                    state.acc.update_rows(x, y)
                    if state.spec.a_bits is not None:
                        state.observer.update(call.module_input)
                self.timing['statistics'] += time.perf_counter() - t0
            return handle

        with _attached([self._capture(s, on_call(s)) for s in active]):
            self._progress_passes('statistics (float pass)')
        if self.dist is not None:  # distributed: reduce, solve, share
            self.dist.solve_fast(self, active)
            return
        for state in active:
            self._solve_and_swap(state)

    def _progress_passes(
            self, what: str,
            before_batch: Optional[Callable[[int], None]] = None) -> None:
        t0 = time.perf_counter()
        n = len(self.batches)
        for i, batch in enumerate(self.batches):
            if before_batch is not None:
                before_batch(i)
            self._forward(batch)
            if (i + 1) % max(1, n // 4) == 0 or i + 1 == n:
                done = time.perf_counter() - t0
                eta = done / (i + 1) * (n - i - 1)
                self.log(f'mmquant: {what}: batch {i + 1}/{n}, '
                         f'{done:.1f}s elapsed, ETA {eta:.1f}s')

    # ------------------------------------------- error-compensated mode
    def _run_error_compensated(self, active: List[_LayerState]) -> None:
        replay = BoundaryReplay(self.model, [s.name for s in active],
                                self.cfg.replay_cache_bytes, self.log,
                                clock=self._forward_clock)

        # 1. float targets of every layer at its sampled rows; the replay
        # hooks record the order of module calls and the first inputs
        all_rows = [0] * len(active)  # rows before sampling, for the ETA

        def on_float(k: int, state: _LayerState
                     ) -> Callable[[OpCall], None]:
            def handle(call: OpCall) -> None:
                replay.layer_called(k)
                self._prepare(state, call)
                t0 = time.perf_counter()
                y = state.acc.output_rows(call.output)
                all_rows[k] += int(y.shape[0])
                idx = self._sample(state, y.shape[0])
                state.indices.append(idx)
                state.targets.append(y if idx is None else y[idx].clone())
                self.timing['statistics'] += time.perf_counter() - t0
            return handle

        with replay:
            with _attached([self._capture(s, on_float(k, s))
                            for k, s in enumerate(active)]):
                self._progress_passes('float targets', replay.begin_batch)
            replay.finish_structure(len(self.batches))
            self._layer_by_layer(active, replay, all_rows)
        if self.cfg.replay_cache_bytes != 0:
            self.log(f'mmquant: replay cache peak '
                     f'{replay.peak_bytes / 2**20:.1f} MiB'
                     + (f', {replay.refused} entries refused over '
                        'replay_cache_bytes' if replay.refused else ''))
        self.replay_info = dict(
            cache_budget_bytes=self.cfg.replay_cache_bytes,
            cache_peak_bytes=int(replay.peak_bytes),
            refused_entries=int(replay.refused),
            boundaries=[b.name for b in replay.boundaries],
            from_module=sum(s.report.replay_from not in (None,
                                                         NETWORK_INPUT)
                            for s in active),
            from_input=sum(s.report.replay_from == NETWORK_INPUT
                           for s in active))

    def _forward_clock(self) -> float:
        """Seconds, less the time spent in the capture hooks."""
        return (time.perf_counter() - self.timing['statistics']
                - self.timing['activations'])

    def _layer_by_layer(self, active: List[_LayerState],
                        replay: BoundaryReplay,
                        all_rows: List[int]) -> None:
        """Error-compensated step 2: layer by layer, inputs from the
        partially quantized network, replayed from the nearest cached
        module boundary (see :mod:`.replay`)."""
        eta = CostEta(self._ec_work(active, replay, all_rows),
                      _ETA_EXPONENTS)
        t_start = time.perf_counter()
        for k, state in enumerate(active):
            t0 = time.perf_counter()
            fwd0 = self.timing['forward']
            stats0 = self.timing['statistics'] + self.timing['activations']
            inputs = self._ec_inputs(k, state, replay)
            replay.free(k)
            t1 = time.perf_counter()
            act = self._fit_activation(state)
            for j, (x, y) in enumerate(zip(inputs, state.targets)):
                if act is not None:
                    x = fake_quantize_activation(x, act[0],
                                                 state.spec.a_bits, act[1])
                with _non_finite_where(state.name, j // state.calls,
                                       len(self.batches)):
                    state.acc.update_rows(x, y)
            del inputs
            state.targets, state.indices = [], []
            self.timing['statistics'] += time.perf_counter() - t1
            if self.dist is None:
                self._solve_and_swap(state, act)
            else:  # distributed: reduce, solve on rank 0, share
                self.dist.solve_error_compensated(self, state, act)
            fwd = self.timing['forward'] - fwd0
            stats = (self.timing['statistics'] + self.timing['activations']
                     - stats0)
            eta.update(dict(forward=fwd, statistics=stats,
                            solver=max(time.perf_counter() - t0 - fwd -
                                       stats, 0.0)))
            rep = state.report
            where = ('the network input' if rep.replay_from == NETWORK_INPUT
                     else repr(rep.replay_from))
            self.log(
                f'mmquant: [{k + 1}/{len(active)}] {state.name}: '
                f'W{state.spec.w_bits}A{state.spec.a_bits or "-"} rel. err '
                f'{rep.rel_error_rtn:.4f} (RTN) -> '
                f'{rep.rel_error:.4f}, replayed from {where}, '
                f'{time.perf_counter() - t_start:.1f}s elapsed, ETA '
                f'{eta.eta():.1f}s')

    def _ec_work(self, active: List[_LayerState], replay: BoundaryReplay,
                 all_rows: List[int]) -> Dict[str, List[float]]:
        """Work estimates per layer for the ETA (see
        :data:`_ETA_EXPONENTS`): float-pass seconds of the forward stretch
        a layer replays; ``all_rows * G * N`` for its statistics (the
        im2col of every row of its calls, before the rows are sampled);
        ``M * N**2`` for its solve (``N`` inputs per group, ``M`` outputs,
        ``G`` groups)."""
        work: Dict[str, List[float]] = dict(forward=[], statistics=[],
                                            solver=[])
        for k, state in enumerate(active):
            groups, n_in = state.acc.A.shape[:2]
            m_out = state.weight2d().shape[0]
            work['forward'].append(replay.forward_cost(k))
            work['statistics'].append(all_rows[k] * groups * n_in)
            work['solver'].append(m_out * n_in * n_in)
        return work

    def _ec_inputs(self, k: int, state: _LayerState,
                   replay: BoundaryReplay) -> List[Tensor]:
        """Layer ``k``'s sampled input rows in the partially quantized
        network: from the nearest boundary whose cached inputs are valid,
        else from the network input."""
        bnd, why = replay.plan(k, len(self.batches))
        rep = state.report
        if bnd is not None:
            snapshot = _observer_state(state.observer)
            try:
                inputs = self._ec_pass(state, replay, bnd)
                rep.replay_from, rep.replay_note = bnd.name, ''
                return inputs
            except CacheMiss as err:
                why = f'replay from {bnd.name!r} abandoned: {err}'
            except Exception as err:  # noqa: B902 - any model error
                why = (f'replay from {bnd.name!r} raised '
                       f'{type(err).__name__}: {err}')
                replay.disable(f'module replays off since {state.name!r}: '
                               f'{why}')
                why += '; module replays are off for the rest of the run'
            _restore_observer(state.observer, snapshot)
            self.log(f'mmquant: {state.name}: {why}; replaying from the '
                     'network input')
            bnd = None
        rep.replay_from, rep.replay_note = NETWORK_INPUT, why
        return self._ec_pass(state, replay, None)

    def _ec_pass(self, state: _LayerState, replay: BoundaryReplay,
                 bnd: Optional[Boundary]) -> List[Tensor]:
        """Run every batch up to the layer's last call, from ``bnd``'s
        cached inputs or (``None``) from the network input, collecting
        the layer's sampled input rows."""
        inputs: List[Tensor] = []

        def handle(call: OpCall) -> None:
            t0 = time.perf_counter()
            j = len(inputs)
            inputs.append(state.acc.input_rows(call.op_input,
                                               state.indices[j]))
            if state.spec.a_bits is not None:
                with _non_finite_where(state.name, j // state.calls,
                                       len(self.batches)):
                    state.observer.update(call.module_input)
            self.timing['statistics'] += time.perf_counter() - t0

        def stop(calls: int) -> None:
            if calls % state.calls == 0:
                raise StopForward

        with self._capture(state, handle, stop):
            replay.memoize(bnd, len(self.batches))
            try:
                for b, batch in enumerate(self.batches):
                    replay.begin_batch(b)
                    if bnd is None:
                        self._forward(batch)
                        continue
                    args, kwargs = replay.inputs(bnd, b)
                    if not self._forward_module(replay, bnd, args, kwargs):
                        raise CacheMiss(
                            f'{state.name!r} did not run its {state.calls} '
                            f'call(s) inside {bnd.name!r} for batch {b}')
            finally:
                replay.unmemoize()
        return inputs

    def _forward_module(self, replay: BoundaryReplay, bnd: Boundary,
                        args: tuple, kwargs: dict) -> bool:
        """Run one boundary like :meth:`_forward` runs the model; returns
        whether a hook stopped it (the layer ran all its calls)."""
        t0 = time.perf_counter()
        hooks0 = self.timing['statistics'] + self.timing['activations']
        try:
            replay.call(bnd, args, kwargs)
            return False
        except StopForward:
            return True
        finally:
            hooks = self.timing['statistics'] + self.timing[
                'activations'] - hooks0
            self.timing['forward'] += time.perf_counter() - t0 - hooks

    # ------------------------------------------------------------- RTN
    def _run_rtn(self, active: List[_LayerState]) -> None:
        with_acts = [s for s in active if s.spec.a_bits is not None]

        def on_call(state: _LayerState) -> Callable[[OpCall], None]:
            def handle(call: OpCall) -> None:
                if state.observer is None:
                    state.observer = self._observer(state)
                with _non_finite_where(state.name, self._batch_index,
                                       len(self.batches)):
                    state.observer.update(call.module_input)
            return handle

        if with_acts:
            with _attached([self._capture(s, on_call(s))
                            for s in with_acts]):
                self._progress_passes('activation ranges')
        for state in active:
            t0 = time.perf_counter()
            q, scale = mse_rtn(state.weight2d(), state.spec.w_bits)
            self.timing['solver'] += time.perf_counter() - t0
            self._swap(state, state.own_weight(q), scale,
                       self._fit_activation(state))
            state.report.time_s = round(time.perf_counter() - t0, 4)

    # ------------------------------------------------------------ common
    def _capture(self, state: _LayerState,
                 on_call: Callable[[OpCall], None],
                 after_forward: Optional[Callable[[int], None]] = None
                 ) -> LayerCapture:
        """A capture of the module that computes the layer now (an
        attention's projections: the nn.MultiheadAttention that runs,
        inside its QuantizedLayer once its in_proj is quantized)."""
        module = state.module
        if state.host is not None:
            module = self.model.get_submodule(
                _runtime_name(self.model, state.host))
            if isinstance(module, QuantizedLayer):
                module = module.layer
        return LayerCapture(module, on_call, after_forward, part=state.part)

    def _observer(self, state: _LayerState) -> ActivationObserver:
        """The seeded activation observer of one layer's input."""
        return ActivationObserver(
            max_samples=self.cfg.act_samples,
            generator=torch.Generator().manual_seed(
                self.cfg.seed + 7919 * state.order))

    def _fit_activation(self, state: _LayerState
                        ) -> Optional[Tuple[float, bool]]:
        """Fit (once) and return the layer's input scale and grid."""
        if state.spec.a_bits is None:
            return None
        if state.report.act_scale is not None:
            return state.report.act_scale, state.report.act_signed
        if self.dist is not None:  # distributed: merge the observer
            self.dist.finish_observer(state)
        t0 = time.perf_counter()
        scale, signed = state.observer.fit(state.spec.a_bits)
        state.report.act_scale = float(scale)
        state.report.act_signed = bool(signed)
        self.timing['activations'] += time.perf_counter() - t0
        return float(scale), bool(signed)

    def _solve_and_swap(self, state: _LayerState,
                        act: Optional[Tuple[float, bool]] = None) -> None:
        if self._restore_journaled(state):
            return
        t0 = time.perf_counter()
        weight = state.weight2d()
        yy = float(state.acc.yy.sum())
        # output_method='rtn': the output layers keep the MSE-RTN start
        # (weight-only rounding); their statistics still give the error
        weight_only = (self.cfg.output_method == 'rtn'
                       and 'output' in (state.report.role or '').split('+'))
        ridge = _damp(state.acc, weight,
                      0.0 if weight_only else self.cfg.damping,
                      self.cfg.damping_scales_with_rows)
        result = solve_layer(
            weight, state.acc, state.spec.w_bits,
            max_rounds=0 if weight_only else self.cfg.max_rounds,
            schedule=self.cfg.schedule)
        if weight_only:
            state.report.note = ("weight-only MSE rounding "
                                 "(output_method='rtn')")
        self.timing['solver'] += time.perf_counter() - t0
        rep = state.report
        rep.rows = int(state.acc.n_rows)
        # the report gives the true output error, without the ridge term
        q_rtn, s_rtn = mse_rtn_float64(
            state.acc.weight_matrix(weight).reshape(weight.shape[0], -1)
            .to(torch.float64), state.spec.w_bits)
        rep.objective_rtn = float(result.objective_init.sum()) - ridge(
            q_rtn, s_rtn)
        rep.objective = float(result.objective.sum()) - ridge(
            result.qweight, result.scale)
        rep.rel_error_rtn = _rel(rep.objective_rtn, yy)
        rep.rel_error = _rel(rep.objective, yy)
        rep.rounds = int(result.rounds)
        if self.cfg.sensitivity:
            t1 = time.perf_counter()
            rep.sensitivity = {}
            for bits in self.cfg.candidate_bits:
                res = result if bits == state.spec.w_bits else solve_layer(
                    weight, state.acc, bits,
                    max_rounds=0 if weight_only else self.cfg.max_rounds,
                    schedule=self.cfg.schedule)
                obj = float(res.objective.sum()) - ridge(res.qweight,
                                                         res.scale)
                rep.sensitivity[str(bits)] = _rel(obj, yy)
            self.timing['solver'] += time.perf_counter() - t1
        if act is None:
            act = self._fit_activation(state)
        self._swap(state, state.own_weight(result.qweight), result.scale,
                   act)
        state.acc = None  # free A and C
        rep.time_s = round(time.perf_counter() - t0, 4)
        if self.journal is not None:
            self.journal.record(state.name, state.own_weight(result.qweight),
                                result.scale, act, state.spec.w_bits, rep)

    def _restore_journaled(self, state: _LayerState) -> bool:
        """Swap in the journal's integers of a layer solved before an
        interruption (its statistics are dropped); False if the journal
        does not hold the layer."""
        entry = None if self.journal is None else self.journal.get(
            state.name)
        if entry is None:
            return False
        expected = tuple(getattr(state.module,
                                 weight_name(state.module)).shape)
        if (tuple(entry.qweight.shape) != expected
                or entry.w_bits != state.spec.w_bits
                or (entry.act is None) != (state.spec.a_bits is None)):
            raise ValueError(
                f'resume journal: layer {state.name!r} was recorded as '
                f'W{entry.w_bits} {tuple(entry.qweight.shape)}, the run '
                f'has W{state.spec.w_bits} {expected}; the journal is '
                'from another model or config')
        entry.apply_report(state.report)
        if entry.act is not None:
            state.report.act_scale, state.report.act_signed = entry.act
        self._swap(state, entry.qweight, entry.scale, entry.act)
        state.acc = None
        return True

    def _swap(self, state: _LayerState, qweight: Tensor, scale: Tensor,
              act: Optional[Tuple[float, bool]]) -> None:
        spec = state.spec
        qlayer = QuantizedLayer(
            state.module, qweight, scale, spec.w_bits,
            spec.a_bits if act is not None else None,
            act_scale=None if act is None else act[0],
            act_signed=False if act is None else act[1])
        set_submodule(self.model, _runtime_name(self.model, state.name),
                       qlayer)
        rep = state.report
        rep.w_bits, rep.a_bits = spec.w_bits, qlayer.a_bits
        rep.calls = state.calls

    def _reestimate_bn(self) -> None:
        t0 = time.perf_counter()
        bns = [m for m in self.model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        saved = [(m, m.momentum) for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        try:
            self._progress_passes('BatchNorm re-estimation')
        finally:
            for m, momentum in saved:
                m.momentum = momentum
                m.eval()
        self.timing['bn'] += time.perf_counter() - t0


@contextlib.contextmanager
def _non_finite_where(layer: str, batch: Optional[int],
                      batches: int) -> Iterator[None]:
    """Name the layer and the calibration batch in a NaN/Inf error.

    Args:
        layer (str): The layer whose statistics are being gathered.
        batch (int, optional): The 0-based calibration batch.
        batches (int): The number of calibration batches.

    Raises:
        ValueError: The statistics' NaN/Inf error, prefixed with
            ``layer '<name>', calibration batch <i+1>/<n>: ``.
    """
    try:
        yield
    except ValueError as err:
        if 'NaN or Inf' not in str(err):
            raise
        where = f'layer {layer!r}'
        if batch is not None:
            where += f', calibration batch {batch + 1}/{batches}'
        raise ValueError(
            f'{where}: {err} (check the float checkpoint and the '
            'calibration data)') from err


@contextlib.contextmanager
def _attached(captures: Iterable[LayerCapture]) -> Iterator[None]:
    """Attach several :class:`LayerCapture` for the duration of a block."""
    with contextlib.ExitStack() as stack:
        for cap in captures:
            stack.enter_context(cap)
        yield


def _damp(acc: StatsAccumulator, weight: Tensor, damping: float,
          scales_with_rows: bool = True
          ) -> Callable[[Tensor, Tensor], float]:
    """Add a ridge pulling the weights towards the float weights.

    ``A += lam I``, ``C += lam W^T``, ``yy += lam |w|^2`` per group, with
    ``lam = damping * max(1, N / rows) * mean(diag A)`` (without the
    ``max(1, N / rows)`` factor if ``scales_with_rows`` is False): the
    objective becomes
    ``|Y - X W_q^T|^2 + lam |W - W_q|^2``. Directions the calibration rows
    do not see (fewer rows than inputs, dead inputs) then follow the float
    weights instead of fitting the calibration set.

    Args:
        acc (StatsAccumulator): The layer's statistics (modified).
        weight (Tensor): The float weight.
        damping (float): Relative ridge strength; 0 disables it.
        scales_with_rows (bool): Grow the ridge with ``N / rows`` when a
            layer has fewer calibration rows than inputs.

    Returns:
        callable: ``ridge(q, scale)``, the ridge term's value summed over
        channels, to subtract from the damped objective.
    """
    G, N = acc.A.shape[:2]
    W = acc.weight_matrix(weight).to(acc.A)  # (G, Mg, N)
    # fewer rows than inputs: the statistics see only part of the input
    # space, so the ridge grows with N / rows
    scale = damping
    if scales_with_rows:
        scale *= max(1.0, N / max(int(acc.n_rows), 1))
    lam = scale * torch.diagonal(acc.A, dim1=1, dim2=2).mean(dim=1)
    if damping > 0:
        acc.A += lam[:, None, None] * torch.eye(
            acc.A.shape[1], dtype=acc.A.dtype, device=acc.A.device)
        acc.C += lam[:, None, None] * W.transpose(1, 2)
        acc.yy += lam[:, None] * (W * W).sum(dim=2)

    def ridge(q: Tensor, scale: Tensor) -> float:
        if damping <= 0:
            return 0.0
        qw = q.reshape(G, W.shape[1], -1).to(W) * scale.reshape(
            G, -1, 1).to(W)
        return float((lam[:, None] * ((W - qw)**2).sum(dim=2)).sum())

    return ridge


def _observer_state(observer: Optional[ActivationObserver]) -> Any:
    """A snapshot of an activation observer (samples and generator)."""
    if observer is None:
        return None
    state = dict(vars(observer))
    if observer.generator is not None:
        state['_generator_state'] = observer.generator.get_state()
    return state


def _restore_observer(observer: Optional[ActivationObserver],
                      state: Any) -> None:
    """Undo the updates of an abandoned pass (see
    :func:`_observer_state`)."""
    if observer is None:
        return
    state = dict(state)
    gen_state = state.pop('_generator_state', None)
    vars(observer).clear()
    vars(observer).update(state)
    if gen_state is not None:
        observer.generator.set_state(gen_state)


def _rel(obj: float, yy: float) -> float:
    if yy <= 0:
        return 0.0 if obj <= 0 else float('inf')
    return math.sqrt(max(obj, 0.0) / yy)


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


def _runtime_name(model: nn.Module, name: str) -> str:
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
