"""Registered quantizers: typed configs over :func:`mmquant.quantize`."""
from typing import Any, Callable, Iterable, Optional, Tuple

from torch import nn

from mmquant.quantization import QuantConfig, QuantReport, quantize


class BaseQuantizer:
    """A quantizer built from a config dict, e.g. in an OpenMMLab config::

        quantizer = dict(type='mmquant.BitSplitQuantizer', w_bits=4,
                         a_bits=8)

    The keyword arguments are those of :class:`~mmquant.QuantConfig`
    except ``method``, which the class fixes; unknown keys fail with a
    message naming them.

    Args:
        **kwargs: Fields of :class:`~mmquant.QuantConfig`.
    """

    #: The weight method this quantizer runs.
    method: str = ''

    def __init__(self, **kwargs: Any) -> None:
        if 'method' in kwargs:
            raise ValueError(
                f"{type(self).__name__} fixes method={self.method!r}; "
                "remove the 'method' key (or use the other quantizer type)")
        self.config = QuantConfig.from_dict(
            dict(kwargs, method=self.method), fixed=('method', ))

    def quantize(self,
                 model: nn.Module,
                 calib_data: Iterable[Any],
                 forward_fn: Optional[Callable[[nn.Module, Any],
                                               Any]] = None,
                 inplace: bool = False,
                 journal: Optional[Any] = None
                 ) -> Tuple[nn.Module, QuantReport]:
        """Quantize ``model`` (see :func:`mmquant.quantize`).

        Args:
            model (nn.Module): The float model.
            calib_data (Iterable): Calibration batches.
            forward_fn (callable, optional): Runs the model on a batch.
            inplace (bool): Quantize ``model`` itself. Defaults to False.
            journal (LayerJournal, optional): The resume journal (see
                :func:`mmquant.quantize`). Defaults to None.

        Returns:
            tuple: The quantized model and the report.
        """
        return quantize(model, calib_data, self.config,
                        forward_fn=forward_fn, inplace=inplace,
                        journal=journal)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.config})'
