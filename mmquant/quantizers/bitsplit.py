"""The BitSplit quantizer (Wang et al., ICML 2020)."""
from mmquant.registry import MODELS
from .base import BaseQuantizer


@MODELS.register_module()
class BitSplitQuantizer(BaseQuantizer):
    """BitSplit PTQ: bit-plane output reconstruction per layer.

    Example::

        quantizer = dict(
            type='mmquant.BitSplitQuantizer',
            w_bits=4, a_bits=8,
            error_compensation=True,
            overrides={'*.fc_cls': dict(w_bits=8)},
            skip=['rpn_head.rpn_reg'])
    """

    method = 'bitsplit'
