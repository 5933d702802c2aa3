"""Error-compensated mode: the paper's Algorithm 1 at the cost of about
one extra forward pass.

Float targets of every layer come from one float pass. Then, layer by
layer in forward order, the layer's inputs come from the network whose
earlier layers are already quantized (weights and activations, the
layer's own input quantizer applied). The first layers, as long as each
runs once per pass, get them from the one pass
(:mod:`~mmquant.quantization.one_pass`): every batch's quantized forward
pass stops at each layer until it is solved. Each later layer gets them
from a pass that starts at the nearest module boundary whose cached
inputs are valid (:mod:`~mmquant.quantization.replay`; else at the
network input) and stops as soon as the layer has run all its calls.
"""
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

from torch import Tensor

from mmquant.core.activation import fake_quantize_activation
from ..capture import NETWORK_INPUT, OpCall, StopForward, attached
from ..one_pass import ONE_PASS, OnePass, one_pass_layers
from ..plan import LayerPlan
from ..progress import CostEta
from ..replay import Boundary, BoundaryReplay, CacheMiss

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Calibration

#: Exponents of the ETA's cost model (see :class:`~..progress.CostEta`):
#: a layer's seconds in a phase are taken as ``rate * work ** alpha``
#: (work: see :meth:`ErrorCompensatedPass.work`). Chosen on the
#: per-layer, per-phase seconds of torchvision ResNet-18 (21 layers) and
#: MobileNetV2 (53), 16 images at 112 and at 224 px, W4A8, measured on the
#: 2-core CPU: statistics time follows the im2col size, solver time grows
#: more slowly than ``M * N**2`` (fixed costs weigh on small layers). On
#: those four runs the predicted time left was within a factor 1.5 of the
#: true one after a quarter, half and three quarters of the layers, where
#: the plain average was off by up to a factor 4.
ETA_EXPONENTS = dict(forward=1.0, statistics=1.0, solver=0.7)


class ErrorCompensatedPass:
    """The error-compensated calibration of a run's active layers.

    Args:
        run (Calibration): The run.
        active (list[LayerPlan]): The layers to quantize, in forward
            order.
    """

    def __init__(self, run: 'Calibration',
                 active: List[LayerPlan]) -> None:
        self.run = run
        self.active = active
        # rows of every call before sampling, for the ETA
        self.all_rows = [0] * len(active)

    def __call__(self) -> Dict:
        """Run the pass; solve and swap every active layer.

        Returns:
            dict: The replay cache's summary for the report.
        """
        run, active = self.run, self.active
        cfg = run.cfg
        replay = BoundaryReplay(
            run.model, [s.name for s in active], cfg.replay_cache_bytes,
            run.log, clock=lambda: run.timer.clock('statistics',
                                                   'activations'))
        with replay:
            with attached([run.capture(s, self._float_target(k, s, replay))
                           for k, s in enumerate(active)]):
                run.run_passes('float targets', replay.begin_batch)
            count, why = one_pass_layers(run, active, replay)
            replay.finish_structure(len(run.batches), replayed_from=count)
            one = OnePass(run, active, count, replay)
            held = max((replay.paused_bytes(k) for k in range(count)),
                       default=0)
            if count:
                run.log(f'mmquant: one pass over the batches for the first '
                        f'{count} of {len(active)} layers (stopped passes '
                        f'hold about {held / 2**20:.1f} MiB, estimated)'
                        + (f'; then replays: {why}' if why else ''))
            elif cfg.one_pass:
                run.log(f'mmquant: no one pass ({why}); every layer replays')
            try:
                self._layer_by_layer(replay, one)
            finally:
                one.close()
        if cfg.replay_cache_bytes != 0:
            run.log(f'mmquant: replay cache peak '
                    f'{replay.peak_bytes / 2**20:.1f} MiB'
                    + (f', {replay.refused} entries refused over '
                       'replay_cache_bytes' if replay.refused else ''))
        return dict(
            one_pass=sum(s.report.replay_from == ONE_PASS for s in active),
            one_pass_planned=count,
            one_pass_note=one.note or why,
            one_pass_estimated_bytes=int(held),
            cache_budget_bytes=cfg.replay_cache_bytes,
            cache_peak_bytes=int(replay.peak_bytes),
            refused_entries=int(replay.refused),
            boundaries=[b.name for b in replay.boundaries],
            from_module=sum(s.report.replay_from not in (None,
                                                         NETWORK_INPUT,
                                                         ONE_PASS)
                            for s in active),
            from_input=sum(s.report.replay_from == NETWORK_INPUT
                           for s in active))

    def _float_target(self, k: int, layer: LayerPlan,
                      replay: BoundaryReplay) -> Callable[[OpCall], None]:
        """The float pass's hook: the layer's float outputs at its sampled
        rows (the replay records the order of module calls and the first
        inputs)."""
        run = self.run

        def handle(call: OpCall) -> None:
            replay.layer_called(k, call.module_input)
            run.prepare(layer, call)
            with run.timer('statistics'):
                y = layer.acc.output_rows(call.output)
                self.all_rows[k] += int(y.shape[0])
                idx = run.sample(layer, y.shape[0])
                layer.indices.append(idx)
                layer.targets.append(y if idx is None else y[idx].clone())
        return handle

    def _layer_by_layer(self, replay: BoundaryReplay,
                        one: OnePass) -> None:
        """Step 2: layer by layer, inputs from the partly quantized
        network (the one pass's, then replays), statistics, solve and
        swap, with a log line per layer."""
        run, active = self.run, self.active
        timer = run.timer
        eta = CostEta(self.work(replay, one.count), ETA_EXPONENTS)
        t_start = time.perf_counter()
        for k, layer in enumerate(active):
            t0 = time.perf_counter()
            fwd0 = timer.total('forward')
            stats0 = timer.total('statistics', 'activations')
            inputs = one.inputs(k) if k < one.count else None
            if inputs is not None:
                layer.report.replay_from = ONE_PASS
                layer.report.replay_note = ''
            else:
                if k == one.count:
                    one.handoff()
                elif k < one.count:
                    run.log(f'mmquant: {one.note}; replaying from here')
                    one.count = k  # later layers: replays
                inputs = self._inputs(k, layer, replay)
            replay.free(k)
            act = run.fit_activation(layer)
            with timer('statistics'):
                for j, (x, y) in enumerate(zip(inputs, layer.targets)):
                    if act is not None:
                        x = fake_quantize_activation(x, act[0],
                                                     layer.spec.a_bits,
                                                     act[1])
                    with run.non_finite_where(layer.name,
                                              j // layer.calls):
                        layer.acc.update_rows(x, y)
                del inputs
                layer.targets, layer.indices = [], []
            if run.dist is None:
                run.solve_and_swap(layer, act)
            else:  # reduce, solve on rank 0, share
                run.dist.solve_error_compensated(run, layer, act)
            fwd = timer.total('forward') - fwd0
            stats = timer.total('statistics', 'activations') - stats0
            eta.update(dict(forward=fwd, statistics=stats,
                            solver=max(time.perf_counter() - t0 - fwd -
                                       stats, 0.0)))
            rep = layer.report
            where = ('the network input' if rep.replay_from == NETWORK_INPUT
                     else 'the one pass' if rep.replay_from == ONE_PASS
                     else repr(rep.replay_from))
            run.log(
                f'mmquant: [{k + 1}/{len(active)}] {layer.name}: '
                f'W{layer.spec.w_bits}A{layer.spec.a_bits or "-"} rel. err '
                f'{rep.rel_error_rtn:.4f} (RTN) -> '
                f'{rep.rel_error:.4f}, inputs from {where}, '
                f'{time.perf_counter() - t_start:.1f}s elapsed, ETA '
                f'{eta.eta():.1f}s')

    def work(self, replay: BoundaryReplay,
             one_pass: int = 0) -> Dict[str, List[float]]:
        """Work estimates per layer for the ETA (see
        :data:`ETA_EXPONENTS`).

        Args:
            replay (BoundaryReplay): The replay, after the float pass.
            one_pass (int): How many of the first layers the one pass
                serves. Defaults to 0.

        Returns:
            dict: Per phase, one number per layer: float-pass seconds of
            the forward stretch a layer replays (in the one pass: from
            the previous layer's call); ``all_rows * G * N`` for
            its statistics (the im2col of every row of its calls, before
            the rows are sampled); ``M * N**2`` for its solve (``N``
            inputs per group, ``M`` outputs, ``G`` groups).
        """
        work: Dict[str, List[float]] = dict(forward=[], statistics=[],
                                            solver=[])
        for k, layer in enumerate(self.active):
            groups, n_in = layer.acc.A.shape[:2]
            m_out = layer.weight2d().shape[0]
            work['forward'].append(replay.segment_cost(k) if k < one_pass
                                   else replay.forward_cost(k))
            work['statistics'].append(self.all_rows[k] * groups * n_in)
            work['solver'].append(m_out * n_in * n_in)
        return work

    def _inputs(self, k: int, layer: LayerPlan,
                replay: BoundaryReplay) -> List[Tensor]:
        """Layer ``k``'s sampled input rows in the partly quantized
        network: from the nearest boundary whose cached inputs are valid,
        else from the network input."""
        run = self.run
        bnd, why = replay.plan(k, len(run.batches))
        rep = layer.report
        if bnd is not None:
            snapshot = None if layer.observer is None else \
                layer.observer.state()
            try:
                inputs = self._pass(layer, replay, bnd)
                rep.replay_from, rep.replay_note = bnd.name, ''
                return inputs
            except CacheMiss as err:
                why = f'replay from {bnd.name!r} abandoned: {err}'
            except Exception as err:  # noqa: B902 - any model error
                why = (f'replay from {bnd.name!r} raised '
                       f'{type(err).__name__}: {err}')
                replay.disable(f'module replays off since {layer.name!r}: '
                               f'{why}')
                why += '; module replays are off for the rest of the run'
            if snapshot is not None:
                layer.observer.restore(snapshot)
            run.log(f'mmquant: {layer.name}: {why}; replaying from the '
                    'network input')
        rep.replay_from, rep.replay_note = NETWORK_INPUT, why
        return self._pass(layer, replay, None)

    def _pass(self, layer: LayerPlan, replay: BoundaryReplay,
              bnd: Optional[Boundary]) -> List[Tensor]:
        """Run every batch up to the layer's last call, from ``bnd``'s
        cached inputs or (``None``) from the network input, collecting
        the layer's sampled input rows (and observing its input)."""
        run = self.run
        inputs: List[Tensor] = []

        def handle(call: OpCall) -> None:
            with run.timer('statistics'):
                j = len(inputs)
                inputs.append(layer.acc.input_rows(call.op_input,
                                                   layer.indices[j]))
                if layer.spec.a_bits is not None:
                    with run.non_finite_where(layer.name,
                                              j // layer.calls):
                        layer.observer.update(call.module_input)

        def stop(calls: int) -> None:
            if calls % layer.calls == 0:
                raise StopForward

        with run.capture(layer, handle, stop):
            replay.memoize(bnd, len(run.batches))
            try:
                for b, batch in enumerate(run.batches):
                    replay.begin_batch(b)
                    if bnd is None:
                        run.forward(batch)
                        continue
                    args, kwargs = replay.inputs(bnd, b)
                    if not self._forward_module(replay, bnd, args, kwargs):
                        raise CacheMiss(
                            f'{layer.name!r} did not run its {layer.calls} '
                            f'call(s) inside {bnd.name!r} for batch {b}')
            finally:
                replay.unmemoize()
        return inputs

    def _forward_module(self, replay: BoundaryReplay, bnd: Boundary,
                        args: tuple, kwargs: dict) -> bool:
        """Run one boundary as the run's forward runs the model; returns
        whether a hook stopped it (the layer ran all its calls)."""
        with self.run.timer('forward'):
            try:
                replay.call(bnd, args, kwargs)
                return False
            except StopForward:
                return True
