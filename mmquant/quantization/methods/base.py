"""What a weight method is, and the table of the registered ones.

A *weight method* turns one layer's float weight (and, when it needs them,
the layer's calibration statistics ``(A, C, yy)``) into integers and
per-channel scales. The engine (:mod:`mmquant.quantization.engine`) owns
everything else: which layers run, the calibration passes, activation
scales, the swap. Adding a method is one module in this package that
subclasses :class:`WeightMethod`, registers it with
:func:`register_weight_method` and is imported by the package's
``__init__``; :class:`~mmquant.quantization.QuantConfig`, the quantizers,
``tools/ptq.py --method`` and the benchmark read the table
:data:`WEIGHT_METHODS` (see docs/architecture.md).
"""
from dataclasses import dataclass
from typing import (Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple,
                    Type, TypeVar)

from torch import Tensor

__all__ = [
    'LayerJob', 'LayerResult', 'WeightMethod', 'WEIGHT_METHODS',
    'register_weight_method', 'build_weight_method'
]


@dataclass
class LayerJob:
    """One layer's weight problem, as the engine hands it to a method.

    Args:
        name (str): The layer's dotted name (for messages).
        weight (Tensor): The float weight as a conv2d/linear problem,
            ``(M, N)`` or ``(M, Cin/G, kh, kw)``.
        bits (int): Weight bits, 2..8.
        stats (StatsAccumulator, optional): The layer's statistics; set
            for methods with :attr:`WeightMethod.needs_statistics`.
        weight_only (bool): Round the weights without reconstructing the
            outputs (``output_method='rtn'`` on an output layer): a
            statistics method still measures the output error.
        candidate_bits (Sequence[int]): Widths at which to also measure
            the output error (sensitivity); empty for none.
        keep_candidates (bool): Also return the integers and scales of
            each candidate width (:attr:`LayerResult.candidates`).
    """

    name: str
    weight: Tensor
    bits: int
    stats: Optional[Any] = None
    weight_only: bool = False
    candidate_bits: Sequence[int] = ()
    keep_candidates: bool = False


@dataclass
class LayerResult:
    """A method's answer for one layer.

    Args:
        qweight (Tensor): ``int8`` integers, shaped like
            :attr:`LayerJob.weight`.
        scale (Tensor): Per-output-channel scales ``(M,)``.
        objective_rtn (float, optional): Output squared error of the MSE
            round-to-nearest start, without any ridge term.
        objective (float, optional): Output squared error of the result.
        yy (float, optional): Output energy ``sum y^2`` (the relative
            errors' denominator).
        rounds (int, optional): Solver rounds run.
        rows (int, optional): Calibration rows the statistics hold.
        sensitivity (dict, optional): ``{str(bits): relative error}`` at
            each candidate width.
        candidates (dict, optional): ``{bits: (qweight, scale)}`` at each
            candidate width (:attr:`LayerJob.keep_candidates`).
        note (str, optional): A remark for the layer's report.
    """

    qweight: Tensor
    scale: Tensor
    objective_rtn: Optional[float] = None
    objective: Optional[float] = None
    yy: Optional[float] = None
    rounds: Optional[int] = None
    rows: Optional[int] = None
    sensitivity: Optional[Dict[str, float]] = None
    candidates: Optional[Dict[int, Tuple[Tensor, Tensor]]] = None
    note: Optional[str] = None


class WeightMethod:
    """Base class of the weight methods.

    Subclasses set :attr:`name`, :attr:`needs_statistics` and
    :attr:`options` (the :class:`~mmquant.quantization.QuantConfig` fields
    they read, which their ``__init__`` takes as keyword arguments) and
    implement :meth:`solve`.
    """

    #: The ``method`` value that selects it.
    name: ClassVar[str] = ''
    #: Whether :meth:`solve` needs the layer's calibration statistics
    #: (one float pass, or the error-compensated passes).
    needs_statistics: ClassVar[bool] = False
    #: The QuantConfig fields only this method reads; a config that sets
    #: one of them for another method is refused.
    options: ClassVar[Tuple[str, ...]] = ()

    @classmethod
    def from_config(cls, config: Any) -> 'WeightMethod':
        """Build the method from a :class:`QuantConfig`'s options.

        Args:
            config (QuantConfig): The run's config.

        Returns:
            WeightMethod: The method object.
        """
        return cls(**{key: getattr(config, key) for key in cls.options})

    def solve(self, job: LayerJob) -> LayerResult:
        """Quantize one layer's weight.

        Args:
            job (LayerJob): The layer's problem.

        Returns:
            LayerResult: Integers, scales and what was measured.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ', '.join(f'{k}={getattr(self, k)!r}' for k in self.options)
        return f'{type(self).__name__}({args})'


#: ``{name: class}`` of every registered weight method.
WEIGHT_METHODS: Dict[str, Type[WeightMethod]] = {}

_M = TypeVar('_M', bound=Type[WeightMethod])


def register_weight_method(cls: _M) -> _M:
    """Class decorator adding a :class:`WeightMethod` to the table.

    Args:
        cls (type): The subclass; its ``name`` must be new.

    Returns:
        type: ``cls`` itself.

    Raises:
        ValueError: For an empty or already registered name.
    """
    if not cls.name or cls.name in WEIGHT_METHODS:
        raise ValueError(f'weight method name {cls.name!r} of '
                         f'{cls.__name__} is empty or already registered')
    WEIGHT_METHODS[cls.name] = cls
    return cls


def build_weight_method(config: Any) -> WeightMethod:
    """The method object of a config's ``method``.

    Args:
        config (QuantConfig): The run's config.

    Returns:
        WeightMethod: The method, built from the config's options.
    """
    return WEIGHT_METHODS[config.method].from_config(config)


def foreign_options(method: str,
                    values: Mapping[str, Any]) -> Dict[str, str]:
    """Options of other methods set in ``values``, with their owner.

    Args:
        method (str): The run's method.
        values (Mapping): Config keys set by the user.

    Returns:
        dict: ``{key: owning method}`` for every key that belongs to
        another method's :attr:`~WeightMethod.options` only.
    """
    own = set(WEIGHT_METHODS[method].options)
    owners: Dict[str, str] = {}
    for name, cls in WEIGHT_METHODS.items():
        for key in cls.options:
            if key not in own:
                owners.setdefault(key, name)
    return {key: owners[key] for key in values if key in owners}
