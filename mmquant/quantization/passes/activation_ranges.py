"""Activation ranges only: the pass of methods without statistics."""
from typing import TYPE_CHECKING, Callable, List

from ..capture import OpCall, attached
from ..plan import LayerPlan

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Calibration


def run_activation_ranges(run: 'Calibration',
                          active: List[LayerPlan]) -> None:
    """Observe the inputs of the layers with quantized activations (one
    float pass, skipped when there are none), then solve and swap every
    layer.

    Args:
        run (Calibration): The run.
        active (list[LayerPlan]): The layers to quantize.
    """
    with_acts = [s for s in active if s.spec.a_bits is not None]

    def on_call(layer: LayerPlan) -> Callable[[OpCall], None]:
        def handle(call: OpCall) -> None:
            if layer.observer is None:
                layer.observer = run.observer(layer)
            with run.non_finite_where(layer.name, run.batch_index):
                layer.observer.update(call.module_input)
        return handle

    if with_acts:
        with attached([run.capture(s, on_call(s)) for s in with_acts]):
            run.run_passes('activation ranges')
    for layer in active:
        run.solve_and_swap(layer)
