"""Round-to-nearest: the baseline weight method, no statistics."""
from mmquant.core.rtn import mse_rtn
from .base import LayerJob, LayerResult, WeightMethod, register_weight_method


@register_weight_method
class RTNMethod(WeightMethod):
    """Per-channel MSE-optimal round-to-nearest of the weights.

    It reads no calibration statistics (the engine still observes the
    activations when ``a_bits`` is set) and takes no options.
    """

    name = 'rtn'
    needs_statistics = False
    options = ()

    def solve(self, job: LayerJob) -> LayerResult:
        """Round ``job.weight`` (see :func:`mmquant.core.rtn.mse_rtn`).

        Args:
            job (LayerJob): The layer's problem.

        Returns:
            LayerResult: Integers and scales; no error is measured.
        """
        qweight, scale = mse_rtn(job.weight, job.bits)
        return LayerResult(qweight=qweight, scale=scale)
