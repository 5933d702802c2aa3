"""The round-to-nearest baseline quantizer."""
from mmquant.registry import MODELS
from .base import BaseQuantizer


@MODELS.register_module()
class RTNQuantizer(BaseQuantizer):
    """Per-channel MSE-optimal round-to-nearest weights, BitSplit's
    activation handling: the obvious baseline, with the same INT
    checkpoint. Options about statistics and the solver are ignored.
    """

    method = 'rtn'
