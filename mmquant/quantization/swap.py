"""After a layer is solved: the swap into a QuantizedLayer, and BN.

Shared by every weight method and calibration pass: the swap replaces a
float layer (at its current dotted name, which passes through the
``.layer`` of already swapped ancestors) by a
:class:`~mmquant.nn.QuantizedLayer`; BatchNorm re-estimation recomputes
running statistics of the quantized model on the calibration batches.
"""
from typing import Callable, Optional, Tuple

from torch import Tensor, nn

from mmquant.nn.module_utils import set_submodule
from mmquant.nn.quantized_layer import QuantizedLayer
from .plan import LayerPlan, runtime_name


def swap_layer(model: nn.Module, layer: LayerPlan, qweight: Tensor,
               scale: Tensor, act: Optional[Tuple[float, bool]]) -> None:
    """Replace ``layer`` in ``model`` by its :class:`QuantizedLayer`.

    Args:
        model (nn.Module): The model being quantized.
        layer (LayerPlan): The layer; its report gets the bits and calls.
        qweight (Tensor): Integers in the layer's own weight layout.
        scale (Tensor): Per-output-channel scales.
        act (tuple, optional): ``(scale, signed)`` of the input quantizer;
            ``None`` keeps the input float.
    """
    spec = layer.spec
    qlayer = QuantizedLayer(
        layer.module, qweight, scale, spec.w_bits,
        spec.a_bits if act is not None else None,
        act_scale=None if act is None else act[0],
        act_signed=False if act is None else act[1])
    set_submodule(model, runtime_name(model, layer.name), qlayer)
    rep = layer.report
    rep.w_bits, rep.a_bits = spec.w_bits, qlayer.a_bits
    rep.calls = layer.calls


def reestimate_bn(model: nn.Module,
                  run_passes: Callable[[str], None]) -> None:
    """Recompute every BatchNorm's running statistics.

    Running statistics are reset and averaged cumulatively over the
    calibration batches (``momentum=None``) in train mode; each BN gets
    its momentum and eval mode back afterwards, also on error.

    Args:
        model (nn.Module): The quantized model.
        run_passes (callable): ``run_passes(what)`` runs the model over
            every calibration batch (with progress lines naming
            ``what``).
    """
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    try:
        run_passes('BatchNorm re-estimation')
    finally:
        for m, momentum in saved:
            m.momentum = momentum
            m.eval()
