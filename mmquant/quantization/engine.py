"""``mmquant.quantize``: post-training quantization of any ``nn.Module``.

A run (:class:`Calibration`) goes through explicit phases:

1. *Plan* (:mod:`.plan`): one forward pass with hooks discovers the
   quantizable layers, their forward order and calls per pass, the input
   and output layers; the config resolves each layer's bits.
2. *Calibrate* (:mod:`.passes`): gather what the weight method needs:
   for methods with statistics, per layer ``A = X^T X``, ``C = X^T Y``,
   ``sum y^2`` from the op's real inputs (im2col with the call's own
   geometry, rows sampled with a seeded generator) and float outputs,
   in fast mode (one float pass) or error-compensated mode (the paper's
   Algorithm 1: layer by layer, inputs from the partly quantized
   network); activation samples for the input quantizers.
3. *Solve* (:mod:`.methods`): the weight method turns each layer's
   weight (and statistics) into integers and scales.
4. *Swap* (:mod:`.swap`): the layer becomes a
   :class:`~mmquant.nn.QuantizedLayer`; optionally BatchNorm statistics
   are re-estimated.

A module that runs more than once per pass gets statistics from all its
calls (one set of integers serves every call). Time is booked per phase
by one :class:`~.timing.PhaseTimer`.
"""
import contextlib
import copy
import dataclasses
import functools
import math
import time
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sequence, Tuple, Union)

import torch
from torch import Tensor, nn

from mmquant.core.activation import ActivationObserver
from mmquant.core.stats import LayerGeometry, StatsAccumulator
from mmquant.nn.layer_kinds import weight_name
from mmquant.nn.quantized_layer import QuantizedLayer
from .capture import LayerCapture, OpCall, StopForward
from .config import QuantConfig
from .distributed import DistributedCalibration, leading_batches
from .journal import LayerJournal
from .methods import (WEIGHT_METHODS, LayerJob, build_weight_method,
                      relative_error)
from .mixed_precision import (allocation_overrides, free_layers,
                              plan_mixed_precision)
from .passes import ErrorCompensatedPass, run_activation_ranges, run_fast
from .plan import LayerPlan, discover_layers, resolve_layers, runtime_name
from .report import QuantReport
from .sensitivity import network_sensitivity, relative_change
from .swap import reestimate_bn, swap_layer
from .timing import PhaseTimer

ForwardFn = Callable[[nn.Module, Any], Any]

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
    run = Calibration(model if inplace else copy.deepcopy(model), config,
                      forward_fn, logger, journal)
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
    """``target_bits``: a fast-mode sensitivity pass (and with
    ``allocation_metric='network'`` the network probe), the allocation,
    then the configured run with the chosen per-layer widths."""
    # calib_data may be a one-shot iterator: both runs use one list
    batches, _ = _collect_batches(calib_data, config.calib_samples)
    network = config.allocation_metric == 'network'
    probe = Calibration(copy.deepcopy(model), dataclasses.replace(
        config, error_compensation=False, sensitivity=True,
        target_bits=None, bn_reestimation=False), forward_fn, logger)
    probe.keep_candidates = network
    logger('mmquant: mixed precision: sensitivity pass (fast mode) at '
           f'widths {config.candidate_bits}')
    _, sens = probe.execute(batches)
    params = {s.name: s.weight2d().numel() for s in probe.layers}
    probed_layers = {r.name: r for r in sens.layers}
    changes = None
    probe_samples = None
    t0 = time.perf_counter()
    if network:
        changes, probe_samples = _network_probe(model, probe, sens, config,
                                                forward_fn, logger)
        for name, row in changes.items():
            probed_layers[name].network_sensitivity = {
                str(b): math.sqrt(max(d, 0.0)) for b, d in row.items()}
    probe_time = time.perf_counter() - t0
    plan = plan_mixed_precision(sens, config, params, changes,
                                probe_samples)
    logger(f'mmquant: mixed precision: {plan.average_bits:.3f} bits per '
           f'weight (target {plan.target_bits}); widths '
           f'{sorted(plan.bits.items())}')
    final = dataclasses.replace(config, target_bits=None,
                                overrides=allocation_overrides(plan, config))
    run = Calibration(model if inplace else copy.deepcopy(model), final,
                      forward_fn, logger, journal)
    qmodel, report = run.execute(batches)
    report.config = config.to_dict()
    report.extra['mixed_precision'] = plan.to_dict()
    for rep in report.layers:
        probed = probed_layers.get(rep.name)
        if probed is not None and probed.sensitivity is not None:
            rep.sensitivity = probed.sensitivity
            rep.network_sensitivity = probed.network_sensitivity
    report.timing['sensitivity_pass'] = sens.timing['total']
    report.timing['network_probe'] = round(probe_time, 4)
    report.timing['total'] = round(
        report.timing['total'] + sens.timing['total'] + probe_time, 4)
    return qmodel, report


def _network_probe(model: nn.Module, probe: 'Calibration',
                   sens: QuantReport, config: QuantConfig,
                   forward_fn: ForwardFn, logger: Logger
                   ) -> Tuple[Dict[str, Dict[int, float]], int]:
    """``D_l(b)`` of every free layer at every candidate width.

    The probe batches are the first ``allocation_samples`` samples of the
    calibration set (of all ranks, in rank order, in a process group);
    the per-batch changes are summed in that global order, so every rank
    and a single process get the same numbers.

    Args:
        model (nn.Module): The float model (left unchanged).
        probe (Calibration): The finished sensitivity pass (its layers
            hold their candidates).
        sens (QuantReport): Its report.
        config (QuantConfig): The user's config.
        forward_fn (callable): ``forward_fn(model, batch)``.
        logger (callable): Progress messages.

    Returns:
        tuple: ``{name: {bits: D_l(b)}}`` and the probe's sample count.
    """
    free, _ = free_layers(sens, config)
    plans = {s.name: s for s in probe.layers}
    layers = [plans[r.name] for r in free]
    widths = list(config.candidate_bits)
    sizes = [_batch_size(b) for b in probe.batches]
    dist = probe.dist
    if dist is None:
        mine = leading_batches(sizes, config.allocation_samples)
        samples = sum(sizes[:mine])
    else:  # the global first samples: a block of each rank's batches
        kept, samples = dist.cut(sizes, config.allocation_samples)
        mine = kept[dist.rank]
    logger(f'mmquant: mixed precision: network sensitivity of '
           f'{len(layers)} layers at widths {widths} on {samples} samples')
    float_model = copy.deepcopy(model).eval()
    candidates = {s.name: s.candidates for s in layers}
    changes, energy = network_sensitivity(
        float_model, layers, candidates, widths,
        probe.batches[:mine], forward_fn, logger)
    if dist is not None:  # every rank's batches, in the global order
        # (a rank whose batches all lie past the probe sends nothing)
        parts = [p for p in dist.gather((changes, energy)) if len(p[1])]
        changes = torch.cat([c for c, _ in parts])
        energy = torch.cat([e for _, e in parts])
    rel = relative_change(changes, energy).tolist()
    out = {s.name: dict(zip(widths, row)) for s, row in zip(layers, rel)}
    for s in layers:
        s.candidates = None  # free the integers
    return out, samples


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


class Calibration:
    """One quantization run: the phases, and the services the passes use.

    :meth:`execute` plans the layers, runs the calibration pass that the
    weight method and mode call for, solves and swaps every layer, and
    returns the model and the report. The passes (:mod:`.passes`) use
    :meth:`forward`, :meth:`run_passes`, :meth:`capture`,
    :meth:`prepare`, :meth:`sample`, :meth:`observer`,
    :meth:`fit_activation`, :meth:`solve_and_swap`,
    :meth:`non_finite_where` and :attr:`timer`.

    Args:
        model (nn.Module): The model to quantize (modified in place).
        config (QuantConfig): The run's config.
        forward_fn (callable): ``forward_fn(model, batch)``.
        log (callable): Receives progress messages.
        journal (LayerJournal, optional): Records solved layers and
            restores those it holds (resume).

    Attributes:
        keep_candidates (bool): With ``sensitivity``: keep every layer's
            integers and scales at each candidate width in
            :attr:`LayerPlan.candidates` (for the network probe of a
            mixed-precision run). Defaults to False.
    """

    def __init__(self,
                 model: nn.Module,
                 config: QuantConfig,
                 forward_fn: ForwardFn,
                 log: Logger,
                 journal: Optional[LayerJournal] = None) -> None:
        self.model = model
        self.cfg = config
        self.forward_fn = forward_fn
        self.log = log
        self.journal = journal
        self.keep_candidates = False
        self.method = build_weight_method(config)
        self.output_method = None if config.output_method is None else \
            WEIGHT_METHODS[config.output_method].from_config(config)
        self.timer = PhaseTimer(('forward', 'statistics', 'solver',
                                 'activations', 'bn'))
        self.batches: List[Any] = []
        self.n_samples = 0
        self.batch_index: Optional[int] = None
        self._batch_ids: Dict[int, int] = {}
        self.layers: List[LayerPlan] = []
        self.replay_info: Dict[str, Any] = {}
        # inside a process group of several ranks: the statistics, draws
        # and solves are shared (see .distributed); None in one process
        self.dist = DistributedCalibration.current()

    # ------------------------------------------------------------ phases
    def execute(self, calib_data: Iterable[Any]
                ) -> Tuple[nn.Module, QuantReport]:
        """Run every phase on the calibration data.

        Args:
            calib_data (Iterable): Calibration batches.

        Returns:
            tuple: The quantized model and the :class:`QuantReport`.
        """
        if self.dist is not None:  # one rank's error fails them all
            return self.dist.guard(lambda: self._execute(calib_data))
        return self._execute(calib_data)

    def _execute(self, calib_data: Iterable[Any]
                 ) -> Tuple[nn.Module, QuantReport]:
        start = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        self.batches, self.n_samples = _collect_batches(
            calib_data, self.cfg.calib_samples)
        if self.dist is not None:  # this rank's block of the batches
            self.batches, self.n_samples = self.dist.shard(
                self.batches, [_batch_size(b) for b in self.batches],
                self.cfg.calib_samples)
        self._batch_ids = {id(b): i for i, b in enumerate(self.batches)}
        with torch.no_grad():
            self._plan()
            active = [s for s in self.layers if s.spec is not None]
            if self.dist is not None:  # counts, shared draws, observers
                self._prepare_distributed(active)
            mode = self.mode
            self.log(f'mmquant: {self.cfg.method} {mode} W{self.cfg.w_bits}'
                     f'A{self.cfg.a_bits or "-"} on {len(active)} layers, '
                     f'{self.n_samples} calibration samples in '
                     f'{len(self.batches)} batches')
            if not self.method.needs_statistics:
                run_activation_ranges(self, active)
            elif self.cfg.error_compensation:
                self.replay_info = ErrorCompensatedPass(self, active)()
            else:
                run_fast(self, active)
            if self.cfg.bn_reestimation:
                reestimate_bn(self.model, functools.partial(
                    self.run_passes, phase='bn'))
        self.model.train(was_training)
        timing = dict(self.timer.seconds)
        timing['total'] = time.perf_counter() - start
        report = QuantReport(
            config=self.cfg.to_dict(),
            mode=mode,
            layers=[s.report for s in self.layers],
            timing={k: round(v, 4) for k, v in timing.items()},
            calib_samples=self.n_samples,
            replay=self.replay_info)
        return self.model, report

    @property
    def mode(self) -> str:
        """``'rtn'`` (a method without statistics), ``'fast'`` or
        ``'error_compensated'``."""
        if not self.method.needs_statistics:
            return self.cfg.method
        return 'error_compensated' if self.cfg.error_compensation \
            else 'fast'

    def _plan(self) -> None:
        """Discover and resolve the layers; seed their row sampling."""
        discovery = discover_layers(self.model, self.batches[0],
                                    self.forward)
        resolve_layers(discovery, self.cfg)
        self.layers = discovery.layers
        for i, layer in enumerate(self.layers):
            layer.generator.manual_seed(self.cfg.seed * 1000003 + i)

    def _prepare_distributed(self, active: List[LayerPlan]) -> None:
        """Distributed: check that every rank found the same layers, count
        rows and values and share the row draws and observers (see
        :mod:`.distributed`)."""
        if self.journal is not None or self.cfg.bn_reestimation:
            raise ValueError('a distributed calibration supports neither '
                             'a resume journal nor bn_reestimation')
        self.dist.check_layers([
            (s.name, s.order, s.calls, s.missed, s.report.role, s.spec)
            for s in self.layers])
        self.dist.prepare(self, active, rows=self.method.needs_statistics)

    # ---------------------------------------------------- forward passes
    def forward(self, batch: Any, phase: str = 'forward') -> Any:
        """One (possibly early-stopped) forward pass, booked to ``phase``
        (hooks book their own phases).

        Args:
            batch: A calibration batch.
            phase (str): The phase the pass's time is booked to.
                Defaults to ``'forward'``.

        Returns:
            The model's output, ``None`` when a hook stopped the pass.
        """
        self.batch_index = self._batch_ids.get(id(batch))
        with self.timer(phase):
            try:
                return self.forward_fn(self.model, batch)
            except StopForward:
                return None

    def run_passes(self, what: str,
                   before_batch: Optional[Callable[[int], None]] = None,
                   phase: str = 'forward') -> None:
        """Run the model over every calibration batch, logging progress.

        Args:
            what (str): What the pass is for (in the log lines).
            before_batch (callable, optional): Called with each batch's
                index before its pass.
            phase (str): The phase the passes are booked to (``'bn'``
                for BatchNorm re-estimation). Defaults to ``'forward'``.
        """
        t0 = time.perf_counter()
        n = len(self.batches)
        for i, batch in enumerate(self.batches):
            if before_batch is not None:
                before_batch(i)
            self.forward(batch, phase)
            if (i + 1) % max(1, n // 4) == 0 or i + 1 == n:
                done = time.perf_counter() - t0
                eta = done / (i + 1) * (n - i - 1)
                self.log(f'mmquant: {what}: batch {i + 1}/{n}, '
                         f'{done:.1f}s elapsed, ETA {eta:.1f}s')

    def non_finite_where(self, layer: str, batch: Optional[int]
                         ) -> contextlib.AbstractContextManager:
        """Name the layer and batch in a NaN/Inf error of the block.

        Args:
            layer (str): The layer's name.
            batch (int, optional): The 0-based calibration batch.

        Returns:
            A context manager (see :func:`_non_finite_where`).
        """
        return _non_finite_where(layer, batch, len(self.batches))

    # ------------------------------------------------ per-layer services
    def capture(self, layer: LayerPlan,
                on_call: Callable[[OpCall], None],
                after_forward: Optional[Callable[[int], None]] = None
                ) -> LayerCapture:
        """A capture of the module that computes the layer now (an
        attention's projections: the nn.MultiheadAttention that runs,
        inside its QuantizedLayer once its in_proj is quantized).

        Args:
            layer (LayerPlan): The layer.
            on_call (callable): Receives each :class:`OpCall`.
            after_forward (callable, optional): Called with the number of
                calls so far after each of the module's forwards.

        Returns:
            LayerCapture: The (unattached) capture.
        """
        return LayerCapture(self.computing_module(layer), on_call,
                            after_forward, part=layer.part)

    def computing_module(self, layer: LayerPlan) -> nn.Module:
        """The module whose call computes the layer now: the layer, or
        for an attention's projections the nn.MultiheadAttention that
        runs (inside its QuantizedLayer once its in_proj is quantized).

        Args:
            layer (LayerPlan): The layer.

        Returns:
            nn.Module: The module.
        """
        if layer.host is None:
            return layer.module
        module = self.model.get_submodule(runtime_name(self.model,
                                                       layer.host))
        return module.layer if isinstance(module, QuantizedLayer) else module

    def prepare(self, layer: LayerPlan, call: OpCall) -> None:
        """Create the layer's accumulator and observer from its first call
        (the conv geometry is the call's own) and its rows per call.

        Args:
            layer (LayerPlan): The layer.
            call (OpCall): Its first call.

        Raises:
            ValueError: If its statistics exceed ``max_stats_bytes``.
        """
        if layer.acc is not None:
            return
        module = layer.module
        if layer.linear:
            geom = LayerGeometry.from_module(module)
        else:
            if layer.kind == 'mha_in':
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
                kernel_size=tuple(layer.weight2d().shape[-2:]),
                stride=call.stride,
                padding=call.padding,
                dilation=call.dilation,
                groups=call.groups)
        layer.geometry = geom
        try:
            layer.acc = StatsAccumulator(
                geom, max_bytes=self.cfg.max_stats_bytes,
                device=call.op_input.device)
        except ValueError as err:
            raise ValueError(f'layer {layer.name!r}: {err}') from None
        layer.observer = self.observer(layer)
        rows = self.cfg.rows_per_layer
        if rows is not None:
            n_batches = len(self.batches) if self.dist is None else \
                self.dist.num_batches  # distributed: of all ranks
            layer.rows_per_call = max(
                1, math.ceil(rows / (n_batches * layer.calls)))

    def sample(self, layer: LayerPlan, total: int) -> Optional[Tensor]:
        """The sampled rows of one call (``None``: all ``total`` rows).

        Args:
            layer (LayerPlan): The layer.
            total (int): The call's rows.

        Returns:
            Tensor, optional: Row indices, drawn from the layer's seeded
            generator.
        """
        if self.dist is not None:  # the draws shared over the ranks
            return self.dist.sample(layer, total)
        if layer.rows_per_call is None or layer.rows_per_call >= total:
            return None
        return torch.randperm(total, generator=layer.generator)[
            :layer.rows_per_call]

    def observer(self, layer: LayerPlan) -> ActivationObserver:
        """The seeded activation observer of one layer's input.

        Args:
            layer (LayerPlan): The layer.

        Returns:
            ActivationObserver: A new observer.
        """
        return ActivationObserver(
            max_samples=self.cfg.act_samples,
            generator=torch.Generator().manual_seed(
                self.cfg.seed + 7919 * layer.order))

    def fit_activation(self, layer: LayerPlan
                       ) -> Optional[Tuple[float, bool]]:
        """Fit (once) and return the layer's input scale and grid.

        Args:
            layer (LayerPlan): The layer.

        Returns:
            tuple, optional: ``(scale, signed)``; ``None`` for a float
            input.
        """
        if layer.spec.a_bits is None:
            return None
        if layer.report.act_scale is not None:
            return layer.report.act_scale, layer.report.act_signed
        if self.dist is not None:  # merge the ranks' observers
            self.dist.finish_observer(layer)
        with self.timer('activations'):
            scale, signed = layer.observer.fit(layer.spec.a_bits)
        layer.report.act_scale = float(scale)
        layer.report.act_signed = bool(signed)
        return float(scale), bool(signed)

    def solve_and_swap(self, layer: LayerPlan,
                       act: Optional[Tuple[float, bool]] = None) -> None:
        """Solve the layer with its weight method and swap it in (or swap
        in the journal's integers of a layer solved before a resume).

        Args:
            layer (LayerPlan): The layer (its statistics are freed).
            act (tuple, optional): Its input quantizer, if already fitted.
        """
        if self._restore_journaled(layer):
            return
        t0 = time.perf_counter()
        is_output = 'output' in (layer.report.role or '').split('+')
        method = self.method
        weight_only = False
        if is_output and self.output_method is not None:
            if self.output_method.needs_statistics or \
                    not self.method.needs_statistics:
                method = self.output_method
            else:
                # a statistics method still measures the output error of
                # the weight-only rounding from the layer's statistics
                weight_only = True
        job = LayerJob(
            name=layer.name, weight=layer.weight2d(),
            bits=layer.spec.w_bits, stats=layer.acc,
            weight_only=weight_only,
            candidate_bits=(self.cfg.candidate_bits
                            if self.cfg.sensitivity else ()),
            keep_candidates=self.keep_candidates)
        with self.timer('solver'):
            result = method.solve(job)
        rep = layer.report
        if result.note is not None:
            rep.note = result.note
        if result.objective is not None:
            rep.rows = result.rows
            rep.objective_rtn = result.objective_rtn
            rep.objective = result.objective
            rep.rel_error_rtn = relative_error(result.objective_rtn,
                                               result.yy)
            rep.rel_error = relative_error(result.objective, result.yy)
            rep.rounds = result.rounds
        if result.sensitivity is not None:
            rep.sensitivity = result.sensitivity
        if result.candidates is not None:
            layer.candidates = {
                bits: (layer.own_weight(q), s)
                for bits, (q, s) in result.candidates.items()}
        if act is None:
            act = self.fit_activation(layer)
        qweight = layer.own_weight(result.qweight)
        swap_layer(self.model, layer, qweight, result.scale, act)
        layer.acc = None  # free A and C
        rep.time_s = round(time.perf_counter() - t0, 4)
        if self.journal is not None and method.needs_statistics:
            self.journal.record(layer.name, qweight, result.scale, act,
                                layer.spec.w_bits, rep)

    def _restore_journaled(self, layer: LayerPlan) -> bool:
        """Swap in the journal's integers of a layer solved before an
        interruption (its statistics are dropped); False if the journal
        does not hold the layer."""
        entry = None if self.journal is None else self.journal.get(
            layer.name)
        if entry is None:
            return False
        expected = tuple(getattr(layer.module,
                                 weight_name(layer.module)).shape)
        if (tuple(entry.qweight.shape) != expected
                or entry.w_bits != layer.spec.w_bits
                or (entry.act is None) != (layer.spec.a_bits is None)):
            raise ValueError(
                f'resume journal: layer {layer.name!r} was recorded as '
                f'W{entry.w_bits} {tuple(entry.qweight.shape)}, the run '
                f'has W{layer.spec.w_bits} {expected}; the journal is '
                'from another model or config')
        entry.apply_report(layer.report)
        if entry.act is not None:
            layer.report.act_scale, layer.report.act_signed = entry.act
        swap_layer(self.model, layer, entry.qweight, entry.scale, entry.act)
        layer.acc = None
        return True


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
