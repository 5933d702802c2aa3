"""What a quantization run did, layer by layer, as JSON-able records."""
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from mmquant.fileio import write_text_atomic


@dataclass
class LayerReport:
    """One layer's outcome.

    Args:
        name (str): The layer's module name.
        type (str): Its class name.
        w_bits (int, optional): Weight bits; ``None`` if left float.
        a_bits (int, optional): Input activation bits; ``None`` if float.
        act_scale (float, optional): Input activation scale.
        act_signed (bool, optional): Whether the input grid is signed.
        calls (int): Calls of the layer per forward pass.
        rows (int): Calibration rows its statistics were built from.
        objective_rtn (float, optional): ``sum_m ||y_m - s_m X q_m||^2`` of
            the MSE round-to-nearest weights (the initialisation).
        objective (float, optional): The same for the final weights.
        rel_error_rtn (float, optional): ``sqrt(objective_rtn / ||Y||^2)``.
        rel_error (float, optional): ``sqrt(objective / ||Y||^2)``.
        rounds (int): Solver rounds.
        time_s (float): Seconds spent on this layer's statistics and solve.
        replay_from (str, optional): Error-compensated mode: the module
            whose cached inputs the layer's pass started from, or
            ``'<input>'`` when ``forward_fn`` ran from the network input
            (see ``replay_note``); ``None`` in other modes.
        replay_note (str): Why the layer's pass started from the network
            input, if it did.
        role (str, optional): ``'input'`` (fed by the network input),
            ``'output'`` (its output reaches the model's outputs),
            ``'input+output'`` or ``None``; input and output layers get
            ``first_last_bits``.
        sensitivity (dict, optional): ``{str(bits): rel_error}`` at each
            candidate width (``QuantConfig.sensitivity``).
        network_sensitivity (dict, optional): ``{str(bits): rel_change}``,
            the relative change of the network's outputs with this layer
            alone at each candidate width (a mixed-precision run's
            ``'network'`` probe, :mod:`mmquant.quantization.sensitivity`).
        note (str): Why a layer was left float, if it was, or how it
            was treated unlike the config's other layers.
    """

    name: str
    type: str
    w_bits: Optional[int] = None
    a_bits: Optional[int] = None
    act_scale: Optional[float] = None
    act_signed: Optional[bool] = None
    calls: int = 0
    rows: int = 0
    objective_rtn: Optional[float] = None
    objective: Optional[float] = None
    rel_error_rtn: Optional[float] = None
    rel_error: Optional[float] = None
    rounds: int = 0
    time_s: float = 0.0
    replay_from: Optional[str] = None
    replay_note: str = ''
    role: Optional[str] = None
    sensitivity: Optional[Dict[str, float]] = None
    network_sensitivity: Optional[Dict[str, float]] = None
    note: str = ''


@dataclass
class QuantReport:
    """The report of one :func:`mmquant.quantize` run.

    Args:
        config (dict): The :class:`~mmquant.QuantConfig` as a dict.
        mode (str): ``'error_compensated'`` or ``'fast'`` (or ``'rtn'``).
        layers (list[LayerReport]): One record per module with weights
            (a floating-point parameter of 2+ dimensions): the quantizable
            layers that ran, in forward order, then the ones left float
            (never called, of an unsupported kind), each with its note.
        timing (dict): Seconds per phase (``forward``, ``statistics``,
            ``solver``, ``activations``, ``bn``, ``total``).
        calib_samples (int): Calibration samples used.
        replay (dict): Error-compensated mode: the replay cache's budget
            (``cache_budget_bytes``), its peak (``cache_peak_bytes``),
            the entries refused over budget, the module boundaries used
            and how many layers replayed from a module (``from_module``)
            or from the network input (``from_input``); empty in other
            modes.
        extra (dict): Anything the caller adds (metrics, file sizes).
    """

    config: Dict[str, Any]
    mode: str
    layers: List[LayerReport] = field(default_factory=list)
    timing: Dict[str, float] = field(default_factory=dict)
    calib_samples: int = 0
    replay: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def quantized_layers(self) -> List[LayerReport]:
        """The layers that were quantized."""
        return [lay for lay in self.layers if lay.w_bits is not None]

    def to_dict(self) -> Dict[str, Any]:
        """Return the report as a JSON-able dict."""
        out = asdict(self)
        out['summary'] = {
            'quantized_layers': len(self.quantized_layers),
            'float_layers': len(self.layers) - len(self.quantized_layers),
        }
        return out

    def save(self, path: str) -> None:
        """Write the report as JSON (atomically).

        Args:
            path (str): Output file.
        """
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2))
