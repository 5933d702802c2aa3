"""How much each layer's quantization at each width moves the network's
output: the error measure of the ``'network'`` bit allocation.

A layer's own relative output error (``LayerReport.sensitivity``, from its
statistics) says nothing about how far that error travels: a depthwise
conv or a detector's regression branch can carry a small relative error
into a large change of the outputs, while another layer's large error is
absorbed by what follows it. The probe measures it directly: for every
layer and candidate width, the float network runs with that one layer
replaced by its integers at that width (solved by the sensitivity pass),
and the squared change of each output tensor ``t`` that ``forward_fn``
returns is taken relative to that tensor's float energy, averaged over
the output tensors,

    ``D_l(b) = 1/T sum_t sum_x ||t_lb(x) - t(x)||^2 / sum_x ||t(x)||^2``

over the probe samples (the first ``allocation_samples`` calibration
samples). Per tensor, so that outputs of different scales count alike:
a detector's box deltas are as much the result as its class logits,
though the logits' energy is far larger. The allocation then minimises
``sum_l D_l(b_l)``: the usual additive model of per-layer distortions
(ZeroQ's and HAWQ's assumption). Activations stay float in the probe:
their A-bit error is the same at every weight width.
"""
import time
from typing import Any, Callable, Iterable, List, Mapping, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmquant.nn import QuantizedLayer
from mmquant.nn.module_utils import set_submodule
from .capture import iter_tensors
from .plan import LayerPlan, runtime_name

__all__ = ['network_sensitivity', 'relative_change']

#: ``{layer: {bits: (integers in the layer's layout, scales)}}``
Candidates = Mapping[str, Mapping[int, Tuple[Tensor, Tensor]]]


def _outputs(out: Any) -> List[Tensor]:
    """The floating-point tensors of an output, in a fixed order."""
    return [t for t in iter_tensors(out) if t.is_floating_point()]


def _per_tensor(tensors: Iterable[Tensor]) -> List[float]:
    """Each tensor's sum of squares, in float64."""
    return [float(t.double().pow(2).sum()) for t in tensors]


def network_sensitivity(model: nn.Module,
                        layers: Sequence[LayerPlan],
                        candidates: Candidates,
                        widths: Sequence[int],
                        batches: Sequence[Any],
                        forward_fn: Callable[[nn.Module, Any], Any],
                        logger: Callable[[str], None] = print
                        ) -> Tuple[Tensor, Tensor]:
    """Squared output change of the float network per layer and width.

    Per batch and output tensor, so that the sums over batches can be
    taken in one fixed order however the batches were spread over
    processes (:func:`relative_change` then gives ``D_l(b)``).

    Args:
        model (nn.Module): The float model (eval mode). Each probed layer
            is swapped out and back; the model is unchanged afterwards,
            also on error.
        layers (Sequence[LayerPlan]): The layers to probe (by name: the
            model's own float layers are swapped).
        candidates (Mapping): ``{name: {bits: (qweight, scale)}}`` of
            every probed layer at every width of ``widths``.
        widths (Sequence[int]): The candidate widths.
        batches (Sequence): The probe batches.
        forward_fn (callable): ``forward_fn(model, batch)``.
        logger (callable): Receives a progress line per layer.

    Returns:
        tuple: ``changes`` (float64, ``(batches, layers, widths,
        tensors)``), the squared change of each output tensor, and
        ``energy`` (float64, ``(batches, tensors)``), each float output
        tensor's summed squares.

    Raises:
        ValueError: If the outputs hold no floating-point tensor, or their
            number differs between batches, or a probed output's tensors
            do not match the float output's.
    """
    ref = []
    with torch.no_grad():
        for batch in batches:
            out = [t.detach().clone() for t in _outputs(
                forward_fn(model, batch))]
            if not out:
                raise ValueError(
                    'network sensitivity: forward_fn returned no '
                    'floating-point tensor to measure the output change '
                    "on (use allocation_metric='layer')")
            if ref and len(out) != len(ref[0]):
                raise ValueError(
                    'network sensitivity: forward_fn returned '
                    f'{len(ref[0])} floating-point tensors for the first '
                    f'probe batch and {len(out)} for another '
                    "(use allocation_metric='layer')")
            ref.append(out)
    n_out = len(ref[0]) if ref else 0
    energy = torch.tensor([_per_tensor(out) for out in ref],
                          dtype=torch.float64).reshape(len(ref), n_out)
    changes = torch.zeros(len(batches), len(layers), len(widths), n_out,
                          dtype=torch.float64)
    start = time.perf_counter()
    for j, layer in enumerate(layers):
        for k, bits in enumerate(widths):
            qweight, scale = candidates[layer.name][bits]
            changes[:, j, k] = torch.tensor(_probe_one(
                model, layer, bits, qweight, scale, batches, ref,
                forward_fn), dtype=torch.float64).reshape(len(ref), n_out)
        elapsed = time.perf_counter() - start
        eta = elapsed / (j + 1) * (len(layers) - j - 1)
        logger(f'mmquant: mixed precision: network sensitivity '
               f'{j + 1}/{len(layers)} {layer.name} '
               f'(elapsed {elapsed:.1f} s, ETA {eta:.1f} s)')
    return changes, energy


def relative_change(changes: Tensor, energy: Tensor) -> Tensor:
    """``D_l(b)``: each output tensor's change relative to its energy,
    averaged over the output tensors.

    Args:
        changes (Tensor): ``(batches, layers, widths, tensors)`` of
            :func:`network_sensitivity` (all batches, in order).
        energy (Tensor): ``(batches, tensors)``.

    Returns:
        Tensor: ``(layers, widths)``, float64. Output tensors that are
        zero on every probe sample are left out.

    Raises:
        ValueError: If every output tensor is zero on the probe samples.
    """
    total = energy.sum(dim=0)
    live = total > 0
    if not bool(live.any()):
        raise ValueError(
            'network sensitivity: the float outputs are all zero on the '
            "probe samples; use allocation_metric='layer'")
    rel = changes.sum(dim=0)[..., live] / total[live]
    return rel.mean(dim=-1)


def _probe_one(model: nn.Module, layer: LayerPlan, bits: int,
               qweight: Tensor, scale: Tensor, batches: Sequence[Any],
               ref: List[List[Tensor]],
               forward_fn: Callable[[nn.Module, Any], Any]
               ) -> List[List[float]]:
    """The squared change of each output tensor per batch with one layer
    at one width."""
    name = runtime_name(model, layer.name)
    original = model.get_submodule(name)
    qlayer = QuantizedLayer(original, qweight, scale, bits)
    set_submodule(model, name, qlayer)
    out = []
    try:
        with torch.no_grad():
            for batch, want in zip(batches, ref):
                got = _outputs(forward_fn(model, batch))
                if len(got) != len(want) or any(
                        g.shape != w.shape for g, w in zip(got, want)):
                    raise ValueError(
                        'network sensitivity: the outputs changed shape '
                        f'with {layer.name!r} at W{bits} (a model whose '
                        'outputs depend on its weights beyond their '
                        "values; use allocation_metric='layer')")
                out.append(_per_tensor(g.double() - w.double()
                                       for g, w in zip(got, want)))
    finally:
        set_submodule(model, name, original)
    return out
