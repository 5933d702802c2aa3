"""Error-compensated mode's one pass: layer after layer, in a single
quantized forward pass over the calibration batches.

Error compensation (the paper's Algorithm 1) needs every layer's inputs
in the network whose earlier layers are already quantized.  When every
batch calls layers ``0 .. P-1`` once each, in that order, one forward
pass per batch serves them all: each batch's pass stops at the call of
layer ``k`` (a forward pre-hook) until every batch has got there; then
layer ``k``'s sampled input rows and activation samples are taken from
the inputs the passes stopped with (in the calling thread, batch after
batch), the layer is solved and swapped, and the passes go on through
its quantized call to layer ``k + 1``.  The forward work of the
whole error-compensated run is then the float pass plus one quantized
pass, whatever the depth.

A forward pass can only be stopped inside a hook and resumed later if it
runs on a stack of its own: each batch's pass runs in a thread.  Exactly
one thread runs at any time (the others and the calling thread wait on
semaphores), batch after batch, so the computation is that of running
the batches one after another: the same kernels with the same thread
count, the same order of the seeded row draws and activation samples.
What torch keeps per thread is set in each batch's thread as in the
calling one: no autograd, and the CUDA device and stream in use.
The resumed call of layer ``k`` runs on the float module object (which
the model no longer holds: it holds the :class:`QuantizedLayer`); for
that call its weight is the quantized layer's dequantized weight and its
input the quantized layer's quantized input, which is exactly what the
quantized layer computes (it wraps a copy of the same module).  So the
quantized model is bit-identical to a replay's
(``tests/quantization/test_one_pass.py``).

What qualifies: from the first layer on, each layer that the float pass
saw called exactly once per batch, next in every batch, as a conv or
linear layer (not an attention's projections) with no hooks or
``forward`` of its own; the run's layers after the first that does not
qualify are replayed (:mod:`.replay`), starting from the module inputs
that the one pass recorded on its way.  The stopped passes hold, per
batch, the inputs of the modules open at the stop and the layer's input:
estimated from the float pass (:meth:`.BoundaryReplay.paused_bytes`),
that memory counts against ``replay_cache_bytes``, and the one pass ends
before the first layer where it would not fit.  A batch that raises, or
stops elsewhere than the float pass said, ends the one pass at that
layer (logged); the layers from there on are replayed, with the same
result.
"""
import collections
import contextlib
import threading
from typing import (TYPE_CHECKING, Any, Callable, Iterator, List, Optional,
                    Tuple)

import torch
from torch import Tensor, nn

from mmquant.nn.layer_kinds import weight_name
from .capture import StopForward, op_input_call
from .plan import LayerPlan, runtime_name
from .replay import BoundaryReplay

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Calibration

__all__ = ['ONE_PASS', 'OnePass', 'one_pass_layers']

#: The ``replay_from`` of a layer calibrated in the one pass.
ONE_PASS = '<one pass>'

_KINDS = ('conv2d', 'conv1d', 'conv_transpose2d', 'linear')
_LOCAL = threading.local()


class _Stopped(Exception):
    """The one pass cannot go on (the message says why)."""


@contextlib.contextmanager
def _cuda_context(cuda: Optional[Tuple[int, Any]]) -> Iterator[None]:
    """The calling thread's CUDA device and stream (per thread in torch)
    in a batch's thread: ``cuda`` is ``(device, stream)`` or ``None``."""
    if cuda is None:
        yield
        return
    device, stream = cuda
    with torch.cuda.device(device), torch.cuda.stream(stream):
        yield


class _BatchPass:
    """One batch's forward pass, run in a thread that stops at hooks.

    Args:
        owner (OnePass): The one pass it belongs to.
        index (int): The batch's index.
        target (callable): Runs the forward pass.
    """

    def __init__(self, owner: 'OnePass', index: int,
                 target: Callable[[], Any]) -> None:
        self.owner = owner
        self.index = index
        self.target = target
        self.at: Optional[int] = None  # the layer it is stopped at
        self.done = False
        self.error: Optional[BaseException] = None
        self.abort = False
        self._go = threading.Semaphore(0)
        self._back = threading.Semaphore(0)
        self.thread = threading.Thread(
            target=self._main, name=f'mmquant-one-pass-{index}',
            daemon=True)
        self.thread.start()

    def _main(self) -> None:
        _LOCAL.batch = self
        self._go.acquire()
        try:
            if not self.abort:
                with torch.no_grad(), _cuda_context(self.owner.cuda):
                    self.target()
        except StopForward:
            pass
        except BaseException as err:  # noqa: B902 - reported by the owner
            self.error = err
        finally:
            self.at = None
            self.done = True
            self._back.release()

    def resume(self) -> None:
        """Let the pass run (the caller waits) until it stops at a layer
        or ends."""
        if self.done:
            return
        self._go.release()
        self._back.acquire()

    def stop(self, k: int) -> None:
        """In the pass's thread: stop at layer ``k`` until resumed.

        Args:
            k (int): The layer.

        Raises:
            StopForward: If the pass is aborted meanwhile.
        """
        self.at = k
        self._back.release()
        self._go.acquire()
        self.at = None
        if self.abort:
            raise StopForward

    def close(self) -> None:
        """End the pass (aborted where it stands) and its thread."""
        if not self.done:
            self.abort = True
            self.resume()
        self.thread.join()


def one_pass_layers(run: 'Calibration', active: List[LayerPlan],
                    replay: BoundaryReplay) -> Tuple[int, str]:
    """How many of the first layers the one pass calibrates.

    Args:
        run (Calibration): The run (after the float pass).
        active (list[LayerPlan]): The layers, in quantization order.
        replay (BoundaryReplay): The replay that recorded the float pass.

    Returns:
        tuple: ``(P, why)``: layers ``0 .. P-1`` qualify (see the module
        docstring); ``why`` says why layer ``P`` does not ('' if
        ``P == len(active)``).
    """
    cfg = run.cfg
    if not cfg.one_pass:
        return 0, 'one_pass=False'
    if cfg.replay_cache_bytes == 0:
        return 0, 'replay_cache_bytes=0 (every layer replays from the ' \
            'network input)'
    seqs = [replay.call_sequence(b) for b in range(len(run.batches))]
    if not seqs:
        return 0, 'no calibration batches'
    calls = [collections.Counter(seq) for seq in seqs]
    budget = cfg.replay_cache_bytes
    for k, layer in enumerate(active):
        module = layer.module
        if layer.host is not None or layer.kind not in _KINDS:
            return k, f'{layer.name!r} is an attention projection'
        if any(counts[k] != 1 for counts in calls):
            return k, f'{layer.name!r} runs {layer.calls} times per pass'
        if any(len(seq) <= k or seq[k] != k for seq in seqs):
            return k, (f'{layer.name!r} is not called after the layers '
                       'before it in every batch')
        if (module._forward_hooks or module._forward_pre_hooks
                or 'forward' in vars(module) or layer.missed):
            return k, (f'{layer.name!r} has hooks or a forward of its own')
        held = replay.paused_bytes(k)
        if budget is not None and held > budget:
            return k, (f'the stopped passes would hold about '
                       f'{held / 2**20:.1f} MiB at {layer.name!r} '
                       f'(estimated), over replay_cache_bytes='
                       f'{budget / 2**20:.1f} MiB')
    return len(active), ''


class OnePass:
    """Runs error-compensated mode's one pass (see the module docstring).

    Use :meth:`inputs` for layers ``0 .. count-1`` in order, between them
    solve and swap each layer; :meth:`handoff` before the first replayed
    layer, and :meth:`close` at the end (also on errors).

    Args:
        run (Calibration): The run (after the float pass).
        active (list[LayerPlan]): The layers, in quantization order.
        count (int): How many of the first layers it calibrates (see
            :func:`one_pass_layers`).
        replay (BoundaryReplay): The replay of the later layers; the one
            pass records module inputs and outputs for it on its way.
    """

    def __init__(self, run: 'Calibration', active: List[LayerPlan],
                 count: int, replay: BoundaryReplay) -> None:
        self.run = run
        self.active = active
        self.count = count
        self.replay = replay
        #: why the one pass ended before ``count`` layers ('' if not)
        self.note = ''
        self.step = -1
        self._passes: List[_BatchPass] = []
        # per batch: (module, args, kwargs) of the call it stopped at
        self._calls: List[Tuple[nn.Module, tuple, dict]] = []
        self._handles: List[Any] = []
        self._resume: Optional[Callable[[tuple, dict], Tuple[tuple,
                                                             dict]]] = None
        self._weight: Optional[Tuple[nn.Module, str, Tensor]] = None
        self._closed = False
        #: the calling thread's CUDA device and stream, for the batches'
        #: threads (None without CUDA in use)
        self.cuda: Optional[Tuple[int, Any]] = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.cuda = (torch.cuda.current_device(),
                         torch.cuda.current_stream())

    @property
    def alive(self) -> bool:
        """Whether it can still serve layers."""
        return not self._closed

    def _start(self) -> None:
        run = self.run
        last = min(self.count, len(self.active) - 1)
        for j in range(last + 1):
            module = self.active[j].module
            if j == self.count:  # the first replayed layer: stop only
                module = run.computing_module(self.active[j])
            self._handles.append(module.register_forward_pre_hook(
                self._hook(j), with_kwargs=True))
        self._passes = [
            _BatchPass(self, b, (lambda batch=batch: run.forward_fn(
                run.model, batch))) for b, batch in enumerate(run.batches)
        ]

    def _hook(self, j: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple,
                 kwargs: dict) -> Optional[Tuple[tuple, dict]]:
            batch = getattr(_LOCAL, 'batch', None)
            if batch is None or batch.owner is not self:
                return None
            if j == self.step and j < self.count:
                self._calls.append((module, args, kwargs))
            batch.stop(j)
            # resumed: layer j is quantized; run what its QuantizedLayer
            # runs (see _advance)
            return self._resume(args, kwargs)
        return hook

    def _collect(self, k: int) -> List[Tensor]:
        """Layer ``k``'s sampled input rows and activation samples from
        the calls the batches stopped at (their inputs are alive and
        unchanged while the passes wait), batch after batch, as a
        replay's capture takes them."""
        run, layer = self.run, self.active[k]
        rows = []
        with run.timer('statistics'):
            for b, (module, args, kwargs) in enumerate(self._calls):
                call = op_input_call(module, args, kwargs)
                if call is None:
                    raise _Stopped(f'batch {b} did not reach the op of '
                                   f'{layer.name!r}')
                rows.append(layer.acc.input_rows(call.op_input,
                                                 layer.indices[b]))
                if layer.spec.a_bits is not None:
                    with run.non_finite_where(layer.name, b):
                        layer.observer.update(call.module_input)
        self._calls = []
        return rows

    def inputs(self, k: int) -> Optional[List[Tensor]]:
        """Run every batch's pass on to layer ``k`` (through the quantized
        call of layer ``k - 1``) and return ``k``'s sampled input rows.

        Args:
            k (int): The layer, ``0 .. count-1``, in order.

        Returns:
            list[Tensor], optional: One tensor of rows per batch; ``None``
            if the one pass ended (:attr:`note` says why; the layer must
            be replayed).
        """
        if not self.alive:
            return None
        if k == 0:
            self._start()
        observer = self.active[k].observer
        snapshot = None if observer is None else observer.state()
        try:
            self._advance(k, strict=True)
            return self._collect(k)
        except _Stopped as stop:
            if snapshot is not None:
                observer.restore(snapshot)
            self.note = f'the one pass ended at {self.active[k].name!r}: ' \
                f'{stop}'
            self.close()
            return None

    def handoff(self) -> None:
        """Run every pass on to the first replayed layer (recording the
        module inputs the replays start from), then end them."""
        if self.alive and self.count < len(self.active):
            try:
                self._advance(self.count, strict=False)
            except _Stopped:
                pass  # fewer recorded inputs: replays start further out
        self.close()

    def _advance(self, k: int, strict: bool) -> None:
        run, replay = self.run, self.replay
        if k > 0:
            # the float module finishes its stopped calls as the
            # QuantizedLayer that replaced it would: quantized input,
            # dequantized weight (the same tensor), its own bias and code
            layer = self.active[k - 1]
            qlayer = run.model.get_submodule(runtime_name(run.model,
                                                          layer.name))
            module, name = layer.module, weight_name(layer.module)
            self._weight = (module, name, module._parameters[name])
            module._parameters[name] = getattr(qlayer.layer, name)
            self._resume = qlayer.quantize_inputs
            self._handles[k - 1].remove()
        self.step = k
        replay.set_step(k)
        self._calls = []
        try:
            with run.timer('forward'):
                for b, batch in enumerate(self._passes):
                    replay.begin_batch(b)
                    batch.resume()
                    if batch.error is not None:
                        err = batch.error
                        raise _Stopped(f'batch {b} raised '
                                       f'{type(err).__name__}: {err}')
                    if strict and batch.at != k:
                        where = 'ended' if batch.done else \
                            f'stopped at {self.active[batch.at].name!r}'
                        raise _Stopped(f'batch {b} {where} first')
        except _Stopped:
            self.close()
            raise
        finally:
            self._put_weight_back()

    def _put_weight_back(self) -> None:
        if self._weight is not None:
            module, name, param = self._weight
            module._parameters[name] = param
            self._weight = None

    def close(self) -> None:
        """End every pass where it stands and remove the hooks."""
        if self._closed:
            return
        self._closed = True
        for batch in self._passes:
            batch.close()
        self._passes = []
        self._calls = []
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._put_weight_back()
