"""Calibration over a ``torch.distributed`` process group.

:func:`mmquant.quantize` called on every rank of an initialised process
group (world size > 1) calibrates on the union of the ranks' batches and
gives every rank the model that one process would give on that union.
Each rank passes its own *shard*: the ranks' batches, concatenated in rank
order, are the single-process calibration list (rank ``r`` holds the
``r``-th contiguous block, see :func:`shard_range`). This module holds
everything the engine does differently in such a run; the engine calls it
at a few marked points (``self.dist``) and never when it runs alone.

What is exchanged, and why the result matches one process:

* *Shard cut*: the batch sizes are gathered, ``calib_samples`` is applied
  to the global list (as one process would), and the global batch count
  enters ``rows_per_call``.
* *Row sampling*: one counting pass per rank records, per layer and
  call, the number of output rows and of observed input values; the
  counts are gathered and every rank replays the layer's seeded generator
  over all calls in global order, keeping the draws of its own calls: the
  sampled rows are those of one process.
* *Activation observers*: the reservoir of
  :class:`~mmquant.core.activation.ActivationObserver` depends only on
  the counts and its generator, so it is simulated on global value
  indices; a rank keeps exactly its values that survive, and the values
  are gathered and put in the reservoir's order: the samples, hence the
  activation scales, are bit-identical.
* *Statistics*: ``A``, ``C``, ``yy`` (float64) and the row count are
  summed over the ranks onto the rank that solves the layer. The sums run
  in another order than one process's sequential sum, so they may differ
  in the last bits (see docs/distributed.md).
* *Solves*: fast mode spreads the layers over the ranks (largest first,
  to the least loaded rank); error-compensated mode solves each layer on
  rank 0. The solving rank broadcasts the integers, scales and report of
  the layer and every rank swaps in the same :class:`QuantizedLayer`.
* *Failures*: every collective is preceded by a status exchange; a rank
  that raises joins the next exchange with its error, and every other
  rank then raises :class:`DistributedRunError` naming it.
"""
import heapq
from typing import (Any, Callable, Dict, List, Optional, Sequence,
                    Tuple)

import torch
from torch import Tensor

from mmquant.core.activation import ActivationObserver
from .capture import attached
from .plan import runtime_name
from .swap import swap_layer

try:
    import torch.distributed as torch_dist
except ImportError:  # pragma: no cover - torch built without it
    torch_dist = None

__all__ = [
    'DistributedCalibration', 'DistributedRunError', 'leading_batches',
    'shard_range', 'reservoir_indices', 'row_draws'
]


class DistributedRunError(RuntimeError):
    """Another rank of a distributed calibration failed."""


def shard_range(num_batches: int, rank: int, world_size: int
                ) -> Tuple[int, int]:
    """The contiguous block of batches of one rank.

    The first ``num_batches % world_size`` ranks get one batch more than
    the others; the blocks, in rank order, cover ``range(num_batches)``.

    Args:
        num_batches (int): Batches of the whole calibration set.
        rank (int): The rank.
        world_size (int): Number of ranks.

    Returns:
        tuple[int, int]: ``(start, stop)`` of the rank's batches.

    Raises:
        ValueError: If a rank would get no batch.
    """
    if num_batches < world_size:
        raise ValueError(
            f'{num_batches} calibration batch(es) for {world_size} '
            'processes: every process needs at least one batch; use fewer '
            'processes, more samples or a smaller batch size')
    base, extra = divmod(num_batches, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def leading_batches(sizes: Sequence[int], limit: Optional[int]) -> int:
    """How many leading batches hold the first ``limit`` samples.

    Args:
        sizes (Sequence[int]): Samples per batch, in order.
        limit (int, optional): Samples wanted; ``None``: all.

    Returns:
        int: The number of batches (whole batches: the last one may take
        the count past ``limit``).
    """
    if limit is None:
        return len(sizes)
    count = 0
    for i, size in enumerate(sizes):
        if count >= limit:
            return i
        count += size
    return len(sizes)


def reservoir_indices(numels: Sequence[int], max_samples: int,
                      generator: torch.Generator) -> Tensor:
    """Which values an :class:`ActivationObserver` keeps, by index.

    Replays :meth:`ActivationObserver.update` on the global indices of the
    observed values (the values of update ``i`` are numbered after those
    of the updates before it), drawing from ``generator`` exactly as the
    observer does.

    Args:
        numels (Sequence[int]): Values of each update, in order.
        max_samples (int): The observer's ``max_samples``.
        generator (torch.Generator): A generator in the state of the
            observer's before its first update (it is advanced).

    Returns:
        Tensor: int64 indices of the kept values, in the order of the
        observer's ``samples``.
    """
    kept = torch.empty(0, dtype=torch.long)
    count = 0

    def pick(n: int, k: int) -> Optional[Tensor]:
        if k >= n:
            return None
        return torch.randperm(n, generator=generator)[:k]

    for n_new in numels:
        if n_new == 0:
            continue
        n_old = count
        count += n_new
        if kept.numel() + n_new <= max_samples:
            kept = torch.cat([kept, torch.arange(n_old, count)])
            continue
        k_new = min(round(max_samples * n_new / (n_old + n_new)), n_new)
        k_old = min(max_samples - k_new, kept.numel())
        old = pick(kept.numel(), k_old)  # the observer's draw order
        new = pick(n_new, k_new)
        kept = torch.cat([
            kept if old is None else kept.index_select(0, old),
            torch.arange(n_old, count) if new is None else new + n_old
        ])
    return kept


def row_draws(totals: Sequence[int], rows_per_call: Optional[int],
              generator: torch.Generator) -> List[Optional[Tensor]]:
    """The engine's row sampling (``Calibration.sample``) over several calls.

    Args:
        totals (Sequence[int]): Rows of each call, in order.
        rows_per_call (int, optional): Rows kept per call; None keeps all.
        generator (torch.Generator): The layer's generator in its state
            before the first call (it is advanced).

    Returns:
        list: Per call, the sampled row indices, or None for all rows.
    """
    draws: List[Optional[Tensor]] = []
    for total in totals:
        pick = None
        if rows_per_call is not None and rows_per_call < total:
            pick = torch.randperm(total, generator=generator)[:rows_per_call]
        draws.append(pick)
    return draws


class _ShardObserver:
    """A rank's part of one layer's activation observer.

    Keeps, from the rank's own calls, the values that the single-process
    reservoir keeps (see :func:`reservoir_indices`), and the running
    min/max. Attributes are rebound, never mutated, so a shallow copy of
    ``vars`` (:meth:`state`) can undo an abandoned pass.

    Args:
        observer (ActivationObserver): The layer's seeded observer, still
            empty; it receives the merged state in :meth:`merged`.
        numels (list[int]): Values per call of all ranks, global order.
        first_call (int): Global index of the rank's first call.
        own_calls (int): Number of the rank's calls.
        kept (Tensor): :func:`reservoir_indices` of ``numels``.
    """

    def __init__(self, observer: ActivationObserver, numels: List[int],
                 first_call: int, own_calls: int, kept: Tensor) -> None:
        self.observer = observer
        self.numels = numels[first_call:first_call + own_calls]
        self.count = sum(numels)
        self.order = kept
        lo = sum(numels[:first_call])
        mine = kept[(kept >= lo) & (kept < lo + sum(self.numels))].sort()
        self.own = mine.values - lo
        self.offsets = [0]
        for n in self.numels:
            self.offsets.append(self.offsets[-1] + n)
        self.cursor = 0
        self.kept: Tuple[Tensor, ...] = ()
        self.min = float('inf')
        self.max = float('-inf')

    def state(self) -> Dict[str, Any]:
        """A snapshot for :meth:`restore`, as
        :meth:`ActivationObserver.state`.

        Returns:
            dict: The snapshot.
        """
        return dict(vars(self))

    def restore(self, state: Dict[str, Any]) -> None:
        """Undo every update since :meth:`state` returned ``state``.

        Args:
            state (dict): A snapshot of this observer.
        """
        vars(self).clear()
        vars(self).update(state)

    def update(self, x: Tensor) -> None:
        """Take one call's input (the rank's calls, in order).

        Args:
            x (Tensor): The layer's input of the call.

        Raises:
            ValueError: If ``x`` contains NaN or Inf, or its size differs
                from the counting pass's.
        """
        v = x.detach().reshape(-1)
        j = self.cursor
        if j >= len(self.numels) or v.numel() != self.numels[j]:
            expect = (self.numels[j] if j < len(self.numels) else
                      'no more calls')
            raise ValueError(
                f'distributed calibration: call {j + 1} of this layer '
                f'sees {v.numel()} input values, the counting pass saw '
                f'{expect}; a distributed run needs layer inputs whose '
                'size does not depend on the weights')
        if v.numel() == 0:
            self.cursor = j + 1
            return
        if not bool(torch.isfinite(v).all()):
            raise ValueError('activation contains NaN or Inf; cannot fit '
                             'an activation scale')
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))
        lo, hi = self.offsets[j], self.offsets[j + 1]
        i0 = int(torch.searchsorted(self.own, lo))
        i1 = int(torch.searchsorted(self.own, hi))
        sel = (self.own[i0:i1] - lo).to(v.device)
        self.kept = self.kept + (v.index_select(0, sel).to(
            device='cpu', dtype=torch.float64), )
        self.cursor = j + 1

    def values(self) -> Tensor:
        """The rank's kept values, by increasing global index."""
        if not self.kept:
            return torch.empty(0, dtype=torch.float64)
        return torch.cat(self.kept)

    def merged(self, parts: List[Tuple[Tensor, float, float]]
               ) -> ActivationObserver:
        """The single-process observer from every rank's part.

        Args:
            parts (list[tuple]): ``(values, min, max)`` of each rank, in
                rank order.

        Returns:
            ActivationObserver: ``observer`` with the merged samples,
            count and range (its generator is not advanced: nothing draws
            from it after the merge).
        """
        obs = self.observer
        by_index = torch.cat([p[0] for p in parts])
        samples = torch.empty_like(by_index)
        samples[self.order.argsort()] = by_index
        obs.samples = samples
        obs.count = self.count
        obs.min = min(p[1] for p in parts)
        obs.max = max(p[2] for p in parts)
        return obs


class DistributedCalibration:
    """The collectives of one calibration run on one rank.

    Args:
        group (ProcessGroup, optional): The process group; defaults to the
            default group.
    """

    #: Distributed calibrations this process has started (see
    #: :func:`mmquant.apis.distributed.rank_guard`).
    runs = 0

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.rank = torch_dist.get_rank(group)
        self.world_size = torch_dist.get_world_size(group)
        backend = torch_dist.get_backend(group)
        self.device = (torch.device('cuda', torch.cuda.current_device())
                       if backend == 'nccl' else torch.device('cpu'))
        self.num_batches = 0
        self.first_batch = 0
        self._draws: Dict[str, List[Optional[Tensor]]] = {}
        self._counts: Dict[str, List[int]] = {}

    @classmethod
    def current(cls) -> Optional['DistributedCalibration']:
        """One for the default process group, if one with several ranks
        is initialised; else None (a single-process run)."""
        if (torch_dist is None or not torch_dist.is_available()
                or not torch_dist.is_initialized()
                or torch_dist.get_world_size() < 2):
            return None
        return cls()

    # ------------------------------------------------------ collectives
    def _status(self, error: Optional[str] = None) -> None:
        """Exchange every rank's status; raise if any rank failed."""
        flag = torch.tensor([0 if error is None else 1], device=self.device)
        torch_dist.all_reduce(flag, group=self.group)
        if int(flag) == 0:
            return
        errors: List[Any] = [None] * self.world_size
        torch_dist.all_gather_object(errors, error, group=self.group)
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if error is not None:
            return  # the failing rank raises its own error
        text = '; '.join(f'rank {r} failed: {e}' for r, e in failed)
        raise DistributedRunError(
            f'distributed calibration stopped on rank {self.rank}: {text}')

    def _collective(self, fn: Callable[..., Any], *args: Any,
                    **kwargs: Any) -> Any:
        """Run one collective after the status exchange."""
        self._status()
        try:
            return fn(*args, group=self.group, **kwargs)
        except Exception as err:  # noqa: BLE001 - a broken group
            raise DistributedRunError(
                f'rank {self.rank}: {fn.__name__} failed: {err}') from err

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank.

        Args:
            obj: This rank's value.

        Returns:
            list: The values of ranks ``0 .. world_size - 1``.
        """
        out: List[Any] = [None] * self.world_size
        self._collective(torch_dist.all_gather_object, out, obj)
        return out

    def _broadcast(self, obj: Any, src: int) -> Any:
        box = [obj]
        self._collective(torch_dist.broadcast_object_list, box, src=src)
        return box[0]

    def guard(self, body: Callable[[], Any]) -> Any:
        """Run ``body`` (the whole calibration); a rank's error fails every
        rank, each raising once all know.

        Args:
            body (callable): The run.

        Returns:
            The body's result, once every rank finished it.

        Raises:
            DistributedRunError: If another rank failed.
        """
        DistributedCalibration.runs += 1
        try:
            result = body()
        except DistributedRunError:
            raise
        except BaseException as err:
            self.fail_peers(err)
            raise
        self._status()
        return result

    def sync(self) -> None:
        """A status exchange outside the calibration (e.g. before
        building datasets, whose loaders may call their own collectives).

        Raises:
            DistributedRunError: If another rank failed.
        """
        self._status()

    def fail_peers(self, err: BaseException) -> None:
        """Join the next status exchange with this rank's error (the other
        ranks then raise :class:`DistributedRunError` naming it).

        Args:
            err (BaseException): The error this rank is about to raise.
        """
        text = ' '.join(f'{type(err).__name__}: {err}'.split())
        self._status(text)

    # ------------------------------------------------------------ setup
    def shard(self, batches: List[Any], sizes: List[int],
              limit: Optional[int]) -> Tuple[List[Any], int]:
        """Apply ``calib_samples`` to the global list of batches.

        Args:
            batches (list): The rank's batches.
            sizes (list[int]): Their numbers of samples.
            limit (int, optional): ``calib_samples``.

        Returns:
            tuple: The rank's batches within the limit and the global
            number of samples.

        Raises:
            ValueError: If the limit leaves a rank without batches.
        """
        kept, total = self.cut(sizes, limit)
        if 0 in kept:
            raise ValueError(
                f'calib_samples={limit} leaves rank {kept.index(0)} without '
                'a calibration batch (the limit applies to the batches of '
                'all ranks in rank order); give every rank its shard of '
                'the limited set')
        self.num_batches = sum(kept)
        self.first_batch = sum(kept[:self.rank])
        return batches[:kept[self.rank]], total

    def cut(self, sizes: List[int], limit: Optional[int]
            ) -> Tuple[List[int], int]:
        """The leading batches of all ranks, in rank order, that hold the
        first ``limit`` samples (:func:`leading_batches`).

        Args:
            sizes (list[int]): Samples per batch of this rank.
            limit (int, optional): Samples wanted; ``None``: all.

        Returns:
            tuple: The number of each rank's batches within the cut and
            the samples those batches hold.
        """
        per_rank = self.gather(list(sizes))
        flat = [size for rank_sizes in per_rank for size in rank_sizes]
        end = leading_batches(flat, limit)
        kept, start = [], 0
        for rank_sizes in per_rank:
            kept.append(max(0, min(len(rank_sizes), end - start)))
            start += len(rank_sizes)
        return kept, sum(flat[:end])

    def check_layers(self, signature: List[Tuple[Any, ...]]) -> None:
        """Check that discovery found the same layers on every rank.

        Args:
            signature (list[tuple]): Per layer: name, order, calls per
                pass, missed calls, role and spec.

        Raises:
            ValueError: If a rank's layers differ from rank 0's.
        """
        for r, other in enumerate(self.gather(signature)):
            if other == signature:
                continue
            diff = next((a, b) for a, b in zip(
                other + [None] * len(signature),
                signature + [None] * len(other)) if a != b)
            raise ValueError(
                'distributed calibration: the forward pass of rank '
                f'{r} found other layers than rank {self.rank}\'s ('
                f'{diff[0]} vs {diff[1]}); every rank must run the same '
                'layers the same number of times')

    def prepare(self, run: Any, active: List[Any], rows: bool) -> None:
        """The counting pass, the shared row draws and the observers.

        Args:
            run (Calibration): The engine's run.
            active (list[LayerPlan]): The layers to quantize.
            rows (bool): Whether statistics are gathered (BitSplit); else
                only the activation ranges (RTN).
        """
        counts: Dict[str, Tuple[List[int], List[int]]] = {
            s.name: ([], []) for s in active}

        def on_call(state: Any) -> Callable[[Any], None]:
            def handle(call: Any) -> None:
                n_rows, numels = counts[state.name]
                if rows:
                    run.prepare(state, call)
                    n_rows.append(
                        int(state.acc.output_rows(call.output).shape[0]))
                if state.spec.a_bits is not None:
                    numels.append(int(call.module_input.numel()))
            return handle

        captures = [run.capture(s, on_call(s)) for s in active]
        with attached(captures):
            run.run_passes('distributed calibration: row counts')
        everyone = self.gather(counts)
        # per layer: counts of every call in global order, and where the
        # rank's calls start
        totals, numels, first = {}, {}, {}
        for state in active:
            parts = [c[state.name] for c in everyone]
            totals[state.name] = [n for p in parts for n in p[0]]
            numels[state.name] = [n for p in parts for n in p[1]]
            first[state.name] = (
                sum(len(p[0]) for p in parts[:self.rank]),
                sum(len(p[1]) for p in parts[:self.rank]))
        # the generators' replays: each layer on one rank, then shared
        owners = _balance({s.name: sum(totals[s.name]) + sum(numels[s.name])
                           for s in active}, self.world_size)
        plans = {}
        for state in active:
            if owners[state.name] != self.rank:
                continue
            draws = row_draws(totals[state.name], state.rows_per_call,
                              state.generator)
            kept = None
            if state.spec.a_bits is not None:
                seeded = run.observer(state)
                kept = reservoir_indices(numels[state.name],
                                         seeded.max_samples,
                                         seeded.generator)
            plans[state.name] = (draws, kept)
        for part in self.gather(plans):
            plans.update(part)
        for state in active:
            draws, kept = plans[state.name]
            row0, value0 = first[state.name]
            own = len(everyone[self.rank][state.name][0])
            self._draws[state.name] = draws[row0:row0 + own]
            self._counts[state.name] = totals[state.name][row0:row0 + own]
            if kept is not None:
                state.observer = _ShardObserver(
                    run.observer(state), numels[state.name], value0,
                    len(everyone[self.rank][state.name][1]), kept)

    # --------------------------------------------------------- per call
    def sample(self, state: Any, total: int) -> Optional[Tensor]:
        """The next call's sampled rows (see :meth:`prepare`).

        Args:
            state (LayerPlan): The layer.
            total (int): Rows of the call.

        Returns:
            Tensor | None: Row indices, or None for all rows.

        Raises:
            ValueError: If the call's rows differ from the counting
                pass's.
        """
        draws, counts = self._draws[state.name], self._counts[state.name]
        if not draws or counts[0] != total:
            raise ValueError(
                f'distributed calibration: layer {state.name!r} has '
                f'{total} rows in a call, the counting pass saw '
                f'{counts[0] if counts else "no more calls"}')
        counts.pop(0)
        return draws.pop(0)

    # -------------------------------------------------------- per layer
    def finish_observer(self, state: Any) -> None:
        """Merge a layer's observer over the ranks (once).

        Args:
            state (LayerPlan): The layer.
        """
        obs = state.observer
        if not isinstance(obs, _ShardObserver):
            return
        parts = self.gather((obs.values(), obs.min, obs.max))
        state.observer = obs.merged(parts)

    def _reduce_stats(self, state: Any, dst: int) -> None:
        """Sum a layer's statistics onto rank ``dst``; other ranks drop
        theirs."""
        acc = state.acc
        rows = torch.tensor([float(acc.n_rows)], dtype=torch.float64)
        for t in (acc.A, acc.C, acc.yy, rows):
            buf = t.to(self.device)
            self._collective(torch_dist.reduce, buf, dst=dst)
            if self.rank == dst and buf is not t:
                t.copy_(buf)
        if self.rank == dst:
            acc.n_rows = int(rows)
        else:
            state.acc = None

    def _solve_on(self, run: Any, state: Any, owner: int,
                  act: Optional[Tuple[float, bool]] = None) -> None:
        """Broadcast the owner's solved layer; the others swap it in."""
        payload = None
        if self.rank == owner:
            qlayer = run.model.get_submodule(
                runtime_name(run.model, state.name))
            cands = None if state.candidates is None else {
                b: (q.cpu(), s.cpu())
                for b, (q, s) in state.candidates.items()}
            payload = (qlayer.qweight.cpu(), qlayer.weight_scale.cpu(),
                       state.report, cands)
        qweight, scale, report, cands = self._broadcast(payload, owner)
        if self.rank == owner:
            return
        state.report = report
        state.candidates = cands
        act = None
        if report.act_scale is not None and state.spec.a_bits is not None:
            act = (report.act_scale, report.act_signed)
        swap_layer(run.model, state, qweight, scale, act)

    def solve_fast(self, run: Any, active: List[Any]) -> None:
        """Fast mode: merge, spread the solves over the ranks, share.

        Args:
            run (Calibration): The engine's run.
            active (list[LayerPlan]): The layers, statistics gathered.
        """
        owners = self._owners(active)
        for state in active:
            self.finish_observer(state)
            self._reduce_stats(state, owners[state.name])
        for state in active:
            if owners[state.name] == self.rank:
                run.solve_and_swap(state)
        for state in active:
            self._solve_on(run, state, owners[state.name])

    def solve_error_compensated(self, run: Any, state: Any,
                                act: Optional[Tuple[float, bool]]) -> None:
        """Error-compensated mode: one layer, solved on rank 0.

        Args:
            run (Calibration): The engine's run.
            state (LayerPlan): The layer, statistics gathered.
            act (tuple, optional): Its activation scale and grid.
        """
        self._reduce_stats(state, 0)
        if self.rank == 0:
            run.solve_and_swap(state, act)
        self._solve_on(run, state, 0)

    def _owners(self, active: List[Any]) -> Dict[str, int]:
        """Each layer's solving rank, balancing ``M * N^2``."""
        cost = {}
        for state in active:
            n_in = state.acc.A.shape[1]
            cost[state.name] = float(state.weight2d().shape[0]) * n_in**2
        return _balance(cost, self.world_size)


def _balance(costs: Dict[str, float], world_size: int) -> Dict[str, int]:
    """Assign every job to a rank: largest first, each to the least
    loaded rank (ties: the lower rank); the same on every rank."""
    load = [(0.0, r) for r in range(world_size)]
    owners = {}
    for name in sorted(costs, key=lambda n: (-costs[n], n)):
        total, rank = heapq.heappop(load)
        owners[name] = rank
        heapq.heappush(load, (total + costs[name], rank))
    return owners
