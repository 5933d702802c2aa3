"""The round-to-nearest baseline quantizer."""
from mmquant.registry import MODELS
from .base import BaseQuantizer


@MODELS.register_module()
class RTNQuantizer(BaseQuantizer):
    """Per-channel MSE-optimal round-to-nearest weights, BitSplit's
    activation handling: the obvious baseline, with the same INT
    checkpoint. The solver's options (``schedule``, ``max_rounds``,
    ``damping``, ...) belong to BitSplit and are refused.
    """

    method = 'rtn'
