"""Fast mode: every layer's statistics from one float pass."""
from typing import TYPE_CHECKING, Callable, List

from ..capture import OpCall, attached
from ..plan import LayerPlan

if TYPE_CHECKING:  # pragma: no cover
    from ..engine import Calibration


def run_fast(run: 'Calibration', active: List[LayerPlan]) -> None:
    """Gather ``(A, C, yy)`` and activation samples of every active layer
    in one float pass over the calibration batches, then solve and swap
    each layer.

    Args:
        run (Calibration): The run.
        active (list[LayerPlan]): The layers to quantize, in forward
            order.
    """
    def on_call(layer: LayerPlan) -> Callable[[OpCall], None]:
        def handle(call: OpCall) -> None:
            run.prepare(layer, call)
            with run.timer('statistics'):
                y = layer.acc.output_rows(call.output)
                idx = run.sample(layer, y.shape[0])
                # only the sampled rows are built (no full im2col)
                x = layer.acc.input_rows(call.op_input, idx)
                if idx is not None:
                    y = y[idx]
                with run.non_finite_where(layer.name, run.batch_index):
                    layer.acc.update_rows(x, y)
                    if layer.spec.a_bits is not None:
                        layer.observer.update(call.module_input)
        return handle

    with attached([run.capture(s, on_call(s)) for s in active]):
        run.run_passes('statistics (float pass)')
    if run.dist is not None:  # reduce, solve spread over ranks, share
        run.dist.solve_fast(run, active)
        return
    for layer in active:
        run.solve_and_swap(layer)
