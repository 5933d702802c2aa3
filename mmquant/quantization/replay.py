"""Replay of error-compensated passes from cached module boundaries.

Error-compensated mode (the paper's Algorithm 1) needs, for every layer,
its inputs in the network whose earlier layers are already quantized.
Running the network from its input for every layer costs O(depth^2)
forward work.  :class:`BoundaryReplay` cuts that to about one block per
layer, with hooks only (no tracing):

* *Boundaries* are the submodules that contain a quantized layer (module
  tree ancestors of one; not the model itself, not a quantizable layer)
  and that run exactly once per forward pass.  Hooks record, per
  calibration batch, the positional and keyword inputs of a boundary when
  it starts and its output when it returns.
* One float pass (the one that computes the float targets) records the
  *structure*: the order in which boundaries start and end and layers
  run.  For a boundary ``M`` it gives ``before(M)``, the last layer (in
  quantization order) that runs before ``M`` starts, and ``end(M)``, the
  last layer that runs before ``M`` returns.  Layers are quantized in the
  order of their first call, so an input recorded in the pass of step
  ``r`` (layers ``0 .. r-1`` quantized) stays exact for every later step
  when ``before(M) < r``, and an output when ``end(M) < r``.
* To calibrate layer ``k``, the innermost boundary that contains every
  call of ``k`` and has a valid cached input for every batch is run from
  that input; inside it, every boundary with a valid cached output
  returns that output instead of running again.  Where no boundary
  qualifies, ``forward_fn`` runs from the network input as before (those
  cached outputs still short-cut it).
* A plain ``nn.Sequential`` boundary ``P`` also offers its suffixes
  ``P[i:]``: child ``i``'s cached input, then ``P``'s children from ``i``
  on, as ``P.forward`` runs them; so the first layer of block ``i + 1``
  starts at block ``i`` instead of at ``P``, and no block output of
  ``P`` has to be kept for it.
* Entries are kept only while a later layer is expected to use them (from
  the boundary each layer is expected to start at); a prediction that
  turns out wrong costs speed, never exactness.

A boundary qualifies only when exactness can be shown: it runs once per
pass in every batch; its inputs and output are built from tensors,
``None``, numbers, strings and plain tuples, lists and dicts (data
samples and other objects are not cached); it has no hooks of its own
and no instance-level ``forward``.  Cached tensors are kept by reference
and carry the version counter they had when cached: a tensor changed in
place afterwards (by the model, e.g. an in-place activation) invalidates
the entry, which is then rebuilt or bypassed.  Containers are rebuilt on
every use, so a module that edits a list it is given cannot corrupt the
cache.  A boundary's forward must be a function of its inputs, its
parameters and buffers and the layers inside it, which holds for the
containers, blocks, stages, necks and heads of torchvision, mmpretrain
and mmdet; ``replay_cache_bytes=0`` turns the cache off.

The cache holds at most ``budget`` bytes (unique tensor storages); an
entry that does not fit is not cached (logged once), and the layers that
needed it replay from an enclosing boundary or from the network input.
"""
import time
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, List, Optional, Sequence, Set,
                    Tuple)

from torch import Tensor, nn

from mmquant.nn.module_utils import inside_quantized
from mmquant.nn.quantized_layer import QuantizedLayer

__all__ = ['Boundary', 'BoundaryReplay', 'CacheMiss', 'cacheable', 'rebuild']

_LEAVES = (type(None), bool, int, float, complex, str, bytes)


class CacheMiss(Exception):
    """A boundary replay found its assumptions broken (a cached tensor
    changed in place, or the layer did not run as the float pass said);
    the step is redone with a full replay."""


def cacheable(obj: Any, depth: int = 8) -> bool:
    """Whether a module input or output can be cached exactly.

    Args:
        obj: A value.
        depth (int): Nesting levels allowed. Defaults to 8.

    Returns:
        bool: True for tensors, ``None``, numbers, strings and plain
        tuples, lists and dicts (string keys) of such values.
    """
    if isinstance(obj, Tensor) or type(obj) in _LEAVES:
        return True
    if depth <= 0:
        return False
    if type(obj) in (tuple, list):
        return all(cacheable(v, depth - 1) for v in obj)
    if type(obj) is dict:
        return all(type(k) is str and cacheable(v, depth - 1)
                   for k, v in obj.items())
    return False


def rebuild(obj: Any) -> Any:
    """A copy of a :func:`cacheable` value with fresh containers and the
    same tensor objects.

    Args:
        obj: A cacheable value.

    Returns:
        The copy.
    """
    if type(obj) in (tuple, list):
        return type(obj)(rebuild(v) for v in obj)
    if type(obj) is dict:
        return {k: rebuild(v) for k, v in obj.items()}
    return obj


def _tensors(obj: Any) -> List[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if type(obj) in (tuple, list):
        return [t for v in obj for t in _tensors(v)]
    if type(obj) is dict:
        return [t for v in obj.values() for t in _tensors(v)]
    return []


def _storage_key(t: Tensor) -> Tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


@dataclass
class _Entry:
    """One cached value with the versions of its tensors."""

    value: Any
    tensors: List[Tensor]
    versions: List[int]
    storages: List[Tuple[int, int]]
    step: int  # recorded in the pass of this step (layers < step quantized)

    def intact(self) -> bool:
        """Whether no tensor of it changed in place since it was cached
        (torch bumps a tensor's version counter on every in-place op)."""
        return all(t._version == v
                   for t, v in zip(self.tensors, self.versions))


@dataclass
class Boundary:
    """A submodule the replay can start from or short-cut.

    Args:
        index (int): Its position among the boundaries.
        name (str): Its module name.
        module (nn.Module): The module.
        input_ok (bool): Its inputs are :func:`cacheable`.
        output_ok (bool): Its outputs are :func:`cacheable`.
        why_not (str): Why it cannot serve, if it cannot.
        windows (list): Per batch, the ``[start, end]`` event times of its
            calls in the float pass.
        before (int): The last layer (quantization order) that runs before
            it starts; -1 if none.
        end (int): The last layer that runs before it returns.
        last_use_in (int): The last step that may start from its inputs.
        last_use_out (int): The last step that may use its cached output.
        start_clock (list): Per batch, float-pass seconds from the batch's
            start to its call (for cost estimates).
        source (Boundary, optional): For the *suffix* ``P[i:]`` of an
            ``nn.Sequential`` ``P``: its child ``i``, whose cached input
            starts the suffix (``module`` is ``P``, ``start`` is ``i``).
        start (int): See ``source``.
    """

    index: int
    name: str
    module: nn.Module
    input_ok: bool = True
    output_ok: bool = True
    why_not: str = ''
    windows: List[List[List[int]]] = field(default_factory=list)
    before: int = -1
    end: int = -1
    last_use_in: int = -1
    last_use_out: int = -1
    start_clock: List[float] = field(default_factory=list)
    source: Optional['Boundary'] = None
    start: int = 0


class BoundaryReplay:
    """Caches boundary inputs/outputs and replays error-compensated passes
    from them (see the module docstring).

    Use it as a context manager around the error-compensated run: it
    attaches its hooks on entry and removes them (and every cached
    tensor) on exit.  Call :meth:`begin_batch` before each forward pass,
    :meth:`layer_called` from the float pass's layer captures, and
    :meth:`finish_structure` after the float pass.

    Args:
        model (nn.Module): The model being quantized.
        layer_names (Sequence[str]): The quantized layers in quantization
            order (an attention's ``out_proj`` after the attention).
        budget (int, optional): Bytes the cache may hold; ``None``: no
            limit; 0 disables the cache (every layer replays from the
            network input).
        log (callable): Receives messages.
        clock (callable, optional): Seconds, for the forward cost
            estimates; defaults to :func:`time.perf_counter`.
    """

    def __init__(self, model: nn.Module, layer_names: Sequence[str],
                 budget: Optional[int], log: Callable[[str], None],
                 clock: Optional[Callable[[], float]] = None) -> None:
        if budget is not None and budget < 0:
            raise ValueError(f'budget must be >= 0 or None, got {budget}')
        self.model = model
        self.layer_names = list(layer_names)
        self.budget = budget
        self.log = log
        self.clock = clock or time.perf_counter
        self.enabled = budget != 0
        #: why module replays were turned off during the run ('' if not)
        self.disabled = ''
        self.boundaries: List[Boundary] = []
        if self.enabled:
            self.boundaries = self._find_boundaries()
        self.step = 0
        self.batch = 0
        self.structured = False
        self._inputs: Dict[Tuple[int, int], _Entry] = {}
        self._outputs: Dict[Tuple[int, int], _Entry] = {}
        self._storages: Dict[Tuple[int, int], int] = {}  # refcounts
        self.bytes_used = 0
        self.peak_bytes = 0
        self.refused = 0
        self._handles: List[Any] = []
        # float pass: event clock and layer call times per batch
        self._time = 0
        self._layer_times: List[Dict[int, List[int]]] = []
        self._layer_clock: List[Dict[int, float]] = []
        self._batch_clock0 = 0.0
        self._seen_layer = False
        # float pass: boundaries open (started, not returned) with their
        # input tensors, and per batch the bytes held at each layer call
        self._open: List[Tuple[Boundary, List[Tensor]]] = []
        self._held: List[Dict[int, int]] = []
        #: layers before this step are calibrated without replays (in
        #: error-compensated mode's one pass); set by finish_structure
        self.replayed_from = 0
        self._memo: Dict[int, Any] = {}
        #: per layer: boundaries that contain all its calls, innermost
        #: first (filled by :meth:`finish_structure`)
        self.enclosing: List[List[Boundary]] = []
        #: per layer: why it has no enclosing boundary ('' if it has one)
        self.no_boundary: List[str] = []

    # ------------------------------------------------------------ setup
    def _find_boundaries(self) -> List[Boundary]:
        ancestors: Set[str] = set()
        for name in self.layer_names:
            parts = name.split('.')
            for i in range(1, len(parts)):
                ancestors.add('.'.join(parts[:i]))
        # the children of an nn.Sequential around a layer can start a
        # suffix of it (see _suffixes), layers or not
        for name, module in self.model.named_modules():
            if name in ancestors and \
                    type(module).forward is nn.Sequential.forward:
                ancestors.update(f'{name}.{child}' if name else child
                                 for child in module._modules)
        out = []
        for name, module in self.model.named_modules():
            if name not in ancestors or inside_quantized(self.model, name):
                continue
            if isinstance(module, QuantizedLayer) or \
                    name in self.layer_names:
                continue  # a layer (an attention) itself
            bnd = Boundary(len(out), name, module)
            if (module._forward_hooks or module._forward_pre_hooks
                    or 'forward' in vars(module)):
                continue  # hooks of its own would run twice on a memo
            out.append(bnd)
        return out

    def __enter__(self) -> 'BoundaryReplay':
        for bnd in self.boundaries:
            self._handles += [
                bnd.module.register_forward_pre_hook(
                    self._pre_hook(bnd), with_kwargs=True),
                bnd.module.register_forward_hook(self._post_hook(bnd))
            ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._unmemo()
        self._inputs.clear()
        self._outputs.clear()
        self._storages.clear()
        self.bytes_used = 0

    # --------------------------------------------------------- recording
    def begin_batch(self, batch: int) -> None:
        """Mark the start of the forward pass of batch ``batch``.

        Args:
            batch (int): Index of the calibration batch.
        """
        self.batch = batch
        if not self.structured:
            while len(self._layer_times) <= batch:
                self._layer_times.append({})
                self._layer_clock.append({})
                self._held.append({})
            self._seen_layer = False
            self._open = []
            self._batch_clock0 = self.clock()
            for bnd in self.boundaries:
                while len(bnd.windows) <= batch:
                    bnd.windows.append([])
                    bnd.start_clock.append(0.0)

    def layer_called(self, index: int,
                     layer_input: Optional[Tensor] = None) -> None:
        """Record a call of quantized layer ``index`` (float pass).

        Args:
            index (int): The layer's position in ``layer_names``.
            layer_input (Tensor, optional): The layer's input, counted in
                :meth:`paused_bytes`.
        """
        if self.structured:
            return
        self._time += 1
        self._layer_times[self.batch].setdefault(index, []).append(
            self._time)
        self._layer_clock[self.batch][index] = (self.clock()
                                                - self._batch_clock0)
        self._seen_layer = True
        if index not in self._held[self.batch]:  # at its first call
            held = [t for _, ts in self._open for t in ts]
            if layer_input is not None:
                held.append(layer_input)
            self._held[self.batch][index] = sum(
                nbytes for _, nbytes in {_storage_key(t) for t in held})

    def _pre_hook(self, bnd: Boundary) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if not self.structured:
                self._time += 1
                bnd.windows[self.batch].append([self._time, -1])
                if len(bnd.windows[self.batch]) == 1:
                    bnd.start_clock[self.batch] = (self.clock()
                                                   - self._batch_clock0)
                self._open.append((bnd, _tensors((args, kwargs))))
            if not bnd.input_ok or (self.structured and not self.enabled):
                return
            if not cacheable((args, kwargs)):
                bnd.input_ok = False
                bnd.why_not = (f'{bnd.name!r}: its inputs hold objects '
                               'other than tensors, numbers and '
                               'tuples/lists/dicts')
                self._drop(self._inputs, bnd.index)
                return
            valid = (not self._seen_layer) if not self.structured else \
                self.step > bnd.before and self.step <= bnd.last_use_in
            key = (bnd.index, self.batch)
            if valid and key not in self._inputs:
                self._put(self._inputs, key, (rebuild(args),
                                              rebuild(kwargs)), bnd)
        return hook

    def _post_hook(self, bnd: Boundary) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not self.structured:
                self._time += 1
                bnd.windows[self.batch][-1][1] = self._time
                for i in range(len(self._open) - 1, -1, -1):
                    if self._open[i][0] is bnd:
                        del self._open[i]
                        break
            if not bnd.output_ok or (self.structured and not self.enabled):
                return
            if not cacheable(output):
                bnd.output_ok = False
                self._drop(self._outputs, bnd.index)
                return
            if not self.structured:
                return
            key = (bnd.index, self.batch)
            if (self.step > bnd.end and self.step <= bnd.last_use_out
                    and key not in self._outputs):
                self._put(self._outputs, key, rebuild(output), bnd)
        return hook

    # ------------------------------------------------------------ cache
    def _put(self, table: Dict[Tuple[int, int], _Entry],
             key: Tuple[int, int], value: Any, bnd: Boundary) -> None:
        tensors = _tensors(value)
        storages = [_storage_key(t) for t in tensors]
        new = sum(nbytes for ptr, nbytes in set(storages)
                  if (ptr, nbytes) not in self._storages)
        if self.budget is not None and self.bytes_used + new > self.budget:
            self.refused += 1
            if self.refused == 1:
                what = 'inputs' if table is self._inputs else 'output'
                self.log(
                    f'mmquant: replay cache full ({_mib(self.bytes_used)} '
                    f'of replay_cache_bytes={_mib(self.budget)} in use, '
                    f'{_mib(new)} more needed): the {what} of '
                    f'{bnd.name!r} is not cached; layers that need it '
                    'replay from an enclosing module or from the network '
                    'input (exact, slower); raise replay_cache_bytes to '
                    'cache more')
            self._drop(table, key[0])
            return
        for sk in storages:
            if sk not in self._storages:
                self._storages[sk] = 0
                self.bytes_used += sk[1]
            self._storages[sk] += 1
        self.peak_bytes = max(self.peak_bytes, self.bytes_used)
        table[key] = _Entry(value, tensors, [t._version for t in tensors],
                            storages, self.step)

    def _remove(self, table: Dict[Tuple[int, int], _Entry],
                key: Tuple[int, int]) -> None:
        entry = table.pop(key)
        for sk in entry.storages:
            self._storages[sk] -= 1
            if not self._storages[sk]:
                del self._storages[sk]
                self.bytes_used -= sk[1]

    def _drop(self, table: Dict[Tuple[int, int], _Entry],
              index: int) -> None:
        for key in [k for k in table if k[0] == index]:
            self._remove(table, key)

    def _complete(self, table: Dict[Tuple[int, int], _Entry],
                  bnd: Boundary, batches: int) -> bool:
        """Whether every batch has a valid entry: recorded after the last
        layer that can change it was quantized, its tensors unchanged
        since (other entries go)."""
        last = bnd.before if table is self._inputs else bnd.end
        ok = True
        for b in range(batches):
            entry = table.get((bnd.index, b))
            if entry is not None and not (entry.step > last
                                          and entry.intact()):
                self._remove(table, (bnd.index, b))
                entry = None
            ok = ok and entry is not None
        return ok

    # -------------------------------------------------------- structure
    def finish_structure(self, batches: int, replayed_from: int = 0
                         ) -> None:
        """Derive each boundary's validity rules from the float pass.

        Args:
            batches (int): Number of calibration batches.
            replayed_from (int): The first step that replays; the layers
                before it get their inputs elsewhere (error-compensated
                mode's one pass), so nothing is kept for them. Defaults
                to 0.
        """
        self.structured = True
        self._open = []
        self.replayed_from = replayed_from
        n = len(self.layer_names)
        self.enclosing = [[] for _ in range(n)]
        self.no_boundary = [''] * n
        if not self.enabled:
            self.no_boundary = ['replay cache disabled '
                                '(replay_cache_bytes=0)'] * n
            return
        kept = []
        for bnd in self.boundaries:
            wins = bnd.windows
            if len(wins) != batches or any(len(w) != 1 for w in wins):
                counts = sorted({len(w) for w in wins} | (
                    {0} if len(wins) != batches else set()))
                if counts == [0] and isinstance(
                        bnd.module, (nn.ModuleList, nn.ModuleDict)):
                    continue  # a plain container, never called
                runs = '/'.join(str(c) for c in counts)
                bnd.why_not = bnd.why_not or (
                    f'{bnd.name!r} runs {runs} time(s) per pass'
                    + (' through its hooks (its forward is called '
                       'directly)' if counts == [0] else
                       ', not once'))
                continue
            kept.append(bnd)
        kept += self._suffixes(kept)
        inside = {}
        for bnd in kept:
            bnd.before, bnd.end, inside[bnd.index] = self._scan(bnd,
                                                                batches)
            if bnd.input_ok:
                for i in inside[bnd.index]:
                    self.enclosing[i].append(bnd)
        for i in range(n):
            # innermost first: the shortest window
            self.enclosing[i].sort(key=lambda bnd: (
                bnd.windows[0][0][1] - bnd.windows[0][0][0]))
            if not self.enclosing[i]:
                why = [bnd.why_not for bnd in self.boundaries
                       if bnd.why_not and self.layer_names[i].startswith(
                           bnd.name + '.')]
                self.no_boundary[i] = (
                    'no enclosing module runs once per pass with '
                    'cacheable inputs' + (f' ({"; ".join(why)})'
                                          if why else ''))
        self._lifetimes(kept, inside)
        self.boundaries = kept
        self.free(-1)

    def _suffixes(self, kept: List[Boundary]) -> List[Boundary]:
        """``P[i:]`` for every ``nn.Sequential`` boundary ``P`` (its own
        ``forward``: ``for m in P: x = m(x)``) and every child ``i`` that
        is a boundary: started from child ``i``'s cached input, it runs
        ``P``'s children from ``i`` on, so a pass never has to start at
        ``P`` itself (and ``P``'s children need no cached outputs)."""
        by_module = {id(bnd.module): bnd for bnd in kept}
        out: List[Boundary] = []
        index = max((bnd.index for bnd in self.boundaries), default=-1)
        for parent in kept:
            if (type(parent.module).forward is not nn.Sequential.forward
                    or not parent.input_ok):
                continue
            children = list(parent.module)
            for i, child in enumerate(children[:-1]):
                src = by_module.get(id(child))
                if src is None or not src.input_ok or i == 0:
                    continue  # P[0:] is P itself
                index += 1
                out.append(Boundary(
                    index, f'{parent.name}[{i}:]', parent.module,
                    output_ok=False,
                    windows=[[[w[0][0], pw[0][1]]] for w, pw in zip(
                        src.windows, parent.windows)],
                    start_clock=list(src.start_clock), source=src,
                    start=i))
        return out

    def _scan(self, bnd: Boundary,
              batches: int) -> Tuple[int, int, List[int]]:
        """``(before, end, inside)`` of a boundary from the float pass:
        the last layer that runs before it starts, before it returns, and
        the layers all of whose calls it contains."""
        before = end = -1
        inside = []
        for i in range(len(self.layer_names)):
            within = True
            for b in range(batches):
                (s, e), = bnd.windows[b]
                calls = self._layer_times[b].get(i, [])
                if any(t < s for t in calls):
                    before = max(before, i)
                if any(t < e for t in calls):
                    end = max(end, i)
                within = within and bool(calls) and all(
                    s < t < e for t in calls)
            if within:
                inside.append(i)
        return before, end, inside

    def _lifetimes(self, kept: List[Boundary],
                   inside: Dict[int, List[int]]) -> None:
        """How long each boundary's cached inputs and outputs are worth
        keeping, from the boundaries the layers are expected to start at.

        A boundary's inputs can first be cached by the pass of its first
        layer (or by the float pass when no layer runs before it), so
        layer ``l`` is expected to start at the innermost enclosing
        boundary available by step ``l``.  Outputs are worth keeping while
        a later expected start encloses the boundary and runs it before
        its layer.  These predictions only decide what to keep: an entry
        missing when needed makes the pass start further out (or the
        boundary run), with the same result.
        """
        n = len(self.layer_names)
        first_call = [min(self._layer_times[0].get(i, [0]))
                      for i in range(n)]

        def avail(bnd: Boundary) -> int:
            """The first step that can use its cached inputs: after the
            first pass that reaches it with the layers before it
            quantized (the float pass if there are none)."""
            src = bnd.source or bnd
            if src.before < 0:
                return 0
            start = src.windows[0][0][0]
            return next((i + 1 for i in range(src.before + 1, n)
                         if first_call[i] > start), n)

        starts: List[Optional[Boundary]] = []
        first = self.replayed_from
        for i, encl in enumerate(self.enclosing):
            starts.append(None if i < first else next(
                (bnd for bnd in encl if avail(bnd) <= i), None))
        for bnd in kept:
            bnd.last_use_in = -1
        for i, start in enumerate(starts):
            if start is not None:
                src = start.source or start
                src.last_use_in = max(src.last_use_in, i)
        for bnd in kept:
            own = [i for i in inside[bnd.index] if i >= first]
            if bnd.source is None and bnd.input_ok and own:
                # its own layers may fall back to it (a deeper input
                # changed in place); not so for the suffixes, which would
                # keep every child's input of an nn.Sequential to its end
                bnd.last_use_in = max(bnd.last_use_in, max(own))
        for bnd in kept:
            bnd.last_use_out = -1
            if (not bnd.output_ok or bnd.source is not None
                    or not inside[bnd.index]):
                continue  # no outputs of suffixes, nor of modules that
                # contain no layer (cheap to run)
            anc = [a for a in kept if a is not bnd and _contains(a, bnd)]
            for i, start in enumerate(starts):
                if i < first or bnd.windows[0][0][1] > first_call[i]:
                    continue  # not replayed, or runs after the layer
                if start is None:
                    # from the network input, unless an enclosing
                    # boundary's output is valid by then
                    used = not any(a.end < i and a.output_ok
                                   and a.source is None for a in anc)
                else:
                    used = start is not bnd and _contains(start, bnd)
                if used:
                    bnd.last_use_out = i

    def call_sequence(self, batch: int) -> List[int]:
        """The quantized layers in the order the float pass called them.

        Args:
            batch (int): Index of the calibration batch.

        Returns:
            list[int]: Layer indices, one per call.
        """
        times = self._layer_times[batch] if batch < len(
            self._layer_times) else {}
        return [i for _, i in sorted((t, i) for i, ts in times.items()
                                     for t in ts)]

    def paused_bytes(self, k: int) -> int:
        """An estimate of the memory that forward passes of every batch,
        all stopped at the call of layer ``k``, hold: the unique tensor
        storages of the inputs of the boundaries open at that moment and
        of the layer's input, summed over the batches, from the float
        pass.

        Args:
            k (int): The layer's position in ``layer_names``.

        Returns:
            int: Bytes.
        """
        return sum(held.get(k, 0) for held in self._held)

    def segment_cost(self, k: int) -> float:
        """Float-pass seconds from layer ``k - 1``'s call (the batch's
        start for ``k = 0``) to layer ``k``'s, summed over the batches.

        Args:
            k (int): The layer's position in ``layer_names``.

        Returns:
            float: The seconds.
        """
        return sum(max(clocks.get(k, 0.0) - clocks.get(k - 1, 0.0), 0.0)
                   for clocks in self._layer_clock)

    def set_step(self, k: int) -> None:
        """Mark that layers ``0 .. k-1`` are quantized (what passes run
        from now on record is valid for step ``k``).

        Args:
            k (int): The step.
        """
        self.step = k

    # ------------------------------------------------------------ steps
    def plan(self, k: int, batches: int) -> Tuple[Optional[Boundary], str]:
        """The boundary to replay layer ``k`` from.

        Args:
            k (int): The layer's position in ``layer_names``.
            batches (int): Number of calibration batches.

        Returns:
            tuple: The boundary (``None``: replay from the network input)
            and, if ``None``, why.
        """
        self.step = k
        if not self.enabled:
            return None, self.disabled or self.no_boundary[k]
        if not self.enclosing[k]:
            return None, self.no_boundary[k]
        for bnd in self.enclosing[k]:
            if bnd.input_ok and self._complete(self._inputs,
                                               bnd.source or bnd, batches):
                return bnd, ''
        if self.refused:
            return None, ('the replay cache is full (replay_cache_bytes); '
                          'no enclosing module has cached inputs')
        return None, 'no enclosing module has cached inputs yet'

    def disable(self, reason: str) -> None:
        """Turn module replays off for the rest of the run.

        Args:
            reason (str): Why; the ``replay_note`` of later layers.
        """
        self.enabled = False
        self.disabled = reason
        self._unmemo()

    def predicted_start(self, k: int) -> Optional[Boundary]:
        """The boundary layer ``k`` is expected to replay from (for cost
        estimates): the innermost enclosing one whose inputs can be valid
        by then.

        Args:
            k (int): The layer's position in ``layer_names``.

        Returns:
            Boundary, optional: The boundary, ``None`` for the network
            input.
        """
        for bnd in self.enclosing[k] if self.enclosing else []:
            if bnd.input_ok and bnd.before < k:
                return bnd
        return None

    def forward_cost(self, k: int) -> float:
        """Float-pass seconds from the start of layer ``k``'s predicted
        replay to its last call, summed over the batches.

        Args:
            k (int): The layer's position in ``layer_names``.

        Returns:
            float: The seconds (0 before the float pass).
        """
        if not self._layer_clock:
            return 0.0
        bnd = self.predicted_start(k)
        total = 0.0
        for b, clocks in enumerate(self._layer_clock):
            start = bnd.start_clock[b] if bnd is not None else 0.0
            total += max(clocks.get(k, 0.0) - start, 0.0)
        return total

    def memoize(self, skip: Optional[Boundary], batches: int) -> None:
        """Make every boundary with a valid cached output (but ``skip``)
        return it instead of running, until :meth:`unmemoize`.

        The module's ``forward`` is shadowed by an instance attribute that
        returns the cached output of the current batch (in fresh
        containers), or runs the class's ``forward`` if a tensor of it
        changed in place meanwhile.

        Args:
            skip (Boundary, optional): The boundary the pass starts at.
            batches (int): Number of calibration batches.
        """
        if not self.enabled:
            return
        for bnd in self.boundaries:
            if bnd is skip or not bnd.output_ok or bnd.source is not None:
                continue
            if self._complete(self._outputs, bnd, batches):
                bnd.module.forward = self._memo_forward(bnd)
                self._memo[bnd.index] = bnd.module

    def _memo_forward(self, bnd: Boundary) -> Callable[..., Any]:
        module = bnd.module
        original = type(module).forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            entry = self._outputs.get((bnd.index, self.batch))
            if entry is None or not entry.intact():
                return original(module, *args, **kwargs)
            return rebuild(entry.value)
        return forward

    def unmemoize(self) -> None:
        """Undo :meth:`memoize`."""
        self._unmemo()

    def _unmemo(self) -> None:
        for module in self._memo.values():
            vars(module).pop('forward', None)
        self._memo = {}

    def inputs(self, bnd: Boundary, batch: int) -> Tuple[tuple, dict]:
        """The cached ``(args, kwargs)`` of a boundary for one batch, in
        fresh containers.

        Args:
            bnd (Boundary): The boundary.
            batch (int): Index of the calibration batch.

        Returns:
            tuple: ``(args, kwargs)``.

        Raises:
            CacheMiss: If the entry is gone or a tensor of it changed in
                place since it was cached.
        """
        src = bnd.source or bnd
        entry = self._inputs.get((src.index, batch))
        if entry is None or not entry.intact():
            raise CacheMiss(f'the cached inputs of {src.name!r} changed')
        args, kwargs = rebuild(entry.value)
        return args, kwargs

    def call(self, bnd: Boundary, args: tuple, kwargs: dict) -> Any:
        """Run a boundary on inputs from :meth:`inputs`.

        A suffix ``P[i:]`` of an ``nn.Sequential`` runs ``P``'s children
        from ``i`` on, as ``P.forward`` does.

        Args:
            bnd (Boundary): The boundary.
            args (tuple): Positional inputs.
            kwargs (dict): Keyword inputs.

        Returns:
            The output.

        Raises:
            CacheMiss: If a suffix's first child was not called with
                exactly one positional input.
        """
        if bnd.source is None:
            return bnd.module(*args, **kwargs)
        if kwargs or len(args) != 1:
            raise CacheMiss(f'{bnd.source.name!r} was not called with one '
                            'positional input, as nn.Sequential calls it')
        x = args[0]
        for module in list(bnd.module)[bnd.start:]:
            x = module(x)
        return x

    def free(self, done: int) -> None:
        """Drop the entries no step after ``done`` can use.

        Args:
            done (int): The last step done (-1: none).
        """
        for table, last in ((self._inputs, 'last_use_in'),
                            (self._outputs, 'last_use_out')):
            by_index = {bnd.index: getattr(bnd, last)
                        for bnd in self.boundaries}
            for key in list(table):
                if by_index.get(key[0], -1) <= done:
                    self._remove(table, key)


def _contains(outer: Boundary, inner: Boundary) -> bool:
    """Whether ``outer``'s call (in the first batch) encloses ``inner``'s."""
    (s0, e0), = outer.windows[0]
    (s1, e1), = inner.windows[0]
    return s0 < s1 and e1 < e0


def _mib(n: Optional[int]) -> str:
    return 'no limit' if n is None else f'{n / 2**20:.1f} MiB'
