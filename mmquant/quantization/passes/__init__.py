"""The calibration passes: how a run gathers what its method needs.

* :func:`run_fast`: one float pass gathers every layer's statistics,
  then every layer is solved (fast mode);
* :class:`ErrorCompensatedPass`: float targets in one pass, then layer by
  layer, inputs from the partly quantized network (the paper's
  Algorithm 1);
* :func:`run_activation_ranges`: for methods without statistics
  (round-to-nearest), one pass observes the activations only.

Each pass uses the services of the engine's run (forward passes,
captures, sampling, the solve and swap), see
:class:`mmquant.quantization.engine.Calibration`.
"""
from .activation_ranges import run_activation_ranges
from .error_compensated import ErrorCompensatedPass
from .fast import run_fast

__all__ = ['run_fast', 'ErrorCompensatedPass', 'run_activation_ranges']
