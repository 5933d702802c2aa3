"""Registered quantizers: typed configs over :func:`mmquant.quantize`."""
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from torch import nn

from mmquant.quantization import QuantConfig, QuantReport, quantize
from mmquant.quantization.methods import WEIGHT_METHODS
from mmquant.registry import MODELS


class BaseQuantizer:
    """A quantizer built from a config dict, e.g. in an OpenMMLab config::

        quantizer = dict(type='mmquant.BitSplitQuantizer', w_bits=4,
                         a_bits=8)

    The keyword arguments are those of :class:`~mmquant.QuantConfig`
    except ``method``, which the class fixes; unknown keys, and options
    of another weight method, fail with a message naming them.

    Args:
        **kwargs: Fields of :class:`~mmquant.QuantConfig`.
    """

    #: The weight method this quantizer runs (a key of
    #: :data:`~mmquant.quantization.methods.WEIGHT_METHODS`).
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


@MODELS.register_module()
class PTQQuantizer(BaseQuantizer):
    """The quantizer of any registered weight method, named by ``method``.

    Example::

        quantizer = dict(type='mmquant.PTQQuantizer', method='rtn',
                         w_bits=4, a_bits=8)

    Args:
        method (str): A key of
            :data:`~mmquant.quantization.methods.WEIGHT_METHODS`.
            Defaults to ``'bitsplit'``.
        **kwargs: The other fields of :class:`~mmquant.QuantConfig`.
    """

    def __init__(self, method: str = 'bitsplit', **kwargs: Any) -> None:
        if method not in WEIGHT_METHODS:
            raise ValueError(f'method must be one of '
                             f'{tuple(WEIGHT_METHODS)}, got {method!r}')
        self.method = method
        super().__init__(**kwargs)


def quantizer_for(method: str) -> Dict[str, Any]:
    """The quantizer config keys that select a weight method.

    The registered quantizer class that fixes ``method`` when there is one
    (``mmquant.BitSplitQuantizer``), else ``mmquant.PTQQuantizer`` with
    ``method``.

    Args:
        method (str): A key of
            :data:`~mmquant.quantization.methods.WEIGHT_METHODS`.

    Returns:
        dict: ``{'type': ...}`` (and ``'method'`` for the generic one).

    Raises:
        ValueError: For an unknown method.
    """
    if method not in WEIGHT_METHODS:
        raise ValueError(f'method must be one of {tuple(WEIGHT_METHODS)}, '
                         f'got {method!r}')
    for name, cls in sorted(MODELS.module_dict.items()):
        if (isinstance(cls, type) and issubclass(cls, BaseQuantizer)
                and cls is not PTQQuantizer and cls.method == method):
            return dict(type=f'mmquant.{name}')
    return dict(type='mmquant.PTQQuantizer', method=method)
