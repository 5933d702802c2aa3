"""The typed, validated configuration of a post-training quantization run.

One :class:`QuantConfig` describes a run for the Python API
(:func:`mmquant.quantize`) and for the registered quantizers, which build
it from their config dicts: unknown keys and unsupported values fail when
the config is made, naming the offending key.
"""
import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from mmquant.core.grid import check_bits
from .methods import WEIGHT_METHODS, foreign_options

#: What ``target_bits`` minimises (see ``QuantConfig.allocation_metric``).
ALLOCATION_METRICS = ('network', 'layer')

# Keys of earlier versions and what replaced them (named in the error).
_REPLACED = {
    'refine_integer': "replaced by schedule: refine_integer=True was "
    "schedule='canonical-planes+integer', False was "
    "schedule='canonical-planes'"
}


@dataclass(frozen=True)
class LayerSpec:
    """What one layer gets: its weight bits and input activation bits.

    Args:
        w_bits (int): Weight bits, 2..8.
        a_bits (int, optional): Bits of the layer's input activations,
            2..8, or ``None`` to keep the input float.
    """

    w_bits: int
    a_bits: Optional[int]


@dataclass
class QuantConfig:
    """Configuration of a BitSplit (or round-to-nearest) PTQ run.

    Layer names are the names of ``model.named_modules()``; patterns are
    shell-style globs (:mod:`fnmatch`), e.g. ``'backbone.conv1'``,
    ``'*.fc_cls'`` or ``'neck.*'``.  Every pattern must match at least one
    quantizable layer (``nn.Conv2d``/``nn.Conv1d``/``nn.ConvTranspose2d``/
    ``nn.Linear`` or subclasses; an ``nn.MultiheadAttention`` ``A`` is the
    two layers ``A`` (its ``in_proj_weight``) and ``A.out_proj``).

    Args:
        w_bits (int): Weight bits of every quantized layer. Defaults to 4.
        a_bits (int, optional): Bits of the input activations of quantized
            layers; ``None`` keeps activations float. Defaults to 8.
        method (str): ``'bitsplit'`` (output reconstruction from
            calibration statistics) or ``'rtn'`` (MSE-optimal per-channel
            round-to-nearest, the baseline). Defaults to ``'bitsplit'``.
        first_last_bits (int, optional): Bits (weights and activations) of
            the *input layers* (those fed by the network input; the first
            layer executed if none is found) and of the *output layers*
            (those whose outputs reach the tensors ``forward_fn`` returns
            without passing through another quantizable layer: a
            classifier's ``fc``, every classification/regression head
            output of a detector; the last layer executed if none is
            found), generalising the paper's first/last layer rule.  An
            input layer's input is the network input and always stays
            float.  ``None`` treats them like every other layer.
            Defaults to 8.
        overrides (dict): ``{pattern: {'w_bits': .., 'a_bits': ..}}``;
            applied in order after ``first_last_bits``, later patterns win.
        skip (list[str]): Patterns of layers to leave float.
        error_compensation (bool): Solve layers in forward order with
            inputs from the already-quantized network (the paper's
            Algorithm 1). ``False`` is the fast mode: one float pass for
            all layers. Defaults to True.
        calib_samples (int, optional): Number of calibration samples
            (counted along the batch dimension) to use; ``None`` uses all
            batches given. Defaults to None.
        rows_per_layer (int, optional): Rows (im2col patches or tokens)
            sampled per layer over the whole calibration set, spread evenly
            over the batches; ``None`` uses every row. Defaults to 16384.
        max_rounds (int): Cap on the solver's alternating rounds.
            Defaults to 100.
        schedule (str): The solver's coordinate updates (see
            :data:`mmquant.core.solver.SCHEDULES`): ``'integer'`` (each
            coordinate moves to its best integer, never worse than a
            bit-plane move), ``'paper'`` (the authors' update: independent
            ternary planes, ``max_rounds`` rounds), ``'canonical-planes'``
            (single canonical bit-plane changes, not the paper's update)
            or ``'canonical-planes+integer'`` (those rounds until nothing
            changes, then integer rounds). The names ``'planes'`` and
            ``'planes+integer'`` of earlier versions raise an error naming
            their replacement. Defaults to ``'integer'``.
        damping (float): Ridge towards the float weights, relative to the
            mean of ``diag(A)`` and multiplied by ``N / rows`` when a layer
            has fewer calibration rows than inputs: the solver minimises
            ``|Y - X W_q^T|^2 + lam |W - W_q|^2``. It keeps such layers
            (heads, late 1x1-spatial layers, small calibration sets) from
            fitting the calibration set. Defaults to 0.1.
        damping_scales_with_rows (bool): Multiply the ridge by
            ``max(1, N / rows)`` (``True``) or keep it at ``damping *
            mean(diag A)`` whatever the number of rows (``False``).
            Defaults to True.
        output_method (str, optional): How the *output layers* (see
            ``first_last_bits``) are quantized: ``'bitsplit'`` (output
            reconstruction, like every other layer) or ``'rtn'``
            (weight-only MSE rounding, as the authors' released code
            treats a classifier's last ``fc``). ``None`` follows
            ``method``. Defaults to None.
        bn_reestimation (bool): Re-estimate BatchNorm running statistics on
            the calibration data after quantization. Defaults to False.
        sensitivity (bool): Also solve every quantized layer at each of
            ``candidate_bits`` from the same statistics and record its
            relative output error at each width
            (``LayerReport.sensitivity``). Defaults to False.
        candidate_bits (list[int]): The widths of ``sensitivity`` and
            ``target_bits``. Defaults to ``[2, 3, 4, 8]``.
        target_bits (float, optional): Mixed precision: choose each
            layer's weight width from ``candidate_bits`` so that the
            average bits per weight (weighted by parameter count, over all
            quantized layers) is at most this, minimising the summed
            error of ``allocation_metric`` after a fast-mode sensitivity
            pass (:mod:`mmquant.quantization.mixed_precision`);
            layers fixed by ``first_last_bits`` or ``overrides`` keep their
            width. ``None``: every layer gets ``w_bits``. Defaults to None.
        allocation_metric (str): The error ``target_bits`` minimises:
            ``'network'``, the relative squared change of the network's
            outputs with that one layer at that width (measured on
            ``allocation_samples`` samples by
            :mod:`mmquant.quantization.sensitivity`), or ``'layer'``, the
            layer's own relative squared output error from its statistics
            (no extra forward passes). Defaults to ``'network'``.
        allocation_samples (int, optional): Calibration samples (the first
            ones, whole batches) the ``'network'`` probe runs on; ``None``:
            all. Defaults to 64.
        act_samples (int): Values kept per activation for fitting its
            scale. Defaults to 2**18.
        max_stats_bytes (int, optional): Budget for one layer's statistics
            (``A`` is N x N per group, float64); a layer over budget is
            refused with a suggestion. Defaults to 2 GiB.
        replay_cache_bytes (int, optional): Memory budget of the
            error-compensated mode's replay cache (module inputs and
            outputs kept so that each layer's pass starts at the nearest
            module boundary instead of the network input; see
            :mod:`mmquant.quantization.replay`). Bytes of the unique tensor
            storages held, on their device. An entry that does not fit is
            not cached (logged once): the layers that needed it replay from
            an enclosing module or from the network input, with identical
            results, only slower. ``0`` disables the cache (every layer's
            pass starts at the network input, the behaviour before the
            cache); ``None``: no limit. Defaults to 4 GiB.
        one_pass (bool): Error-compensated mode: calibrate the first
            layers, as long as each runs once per forward pass, in one
            quantized pass over the batches that stops at each layer
            until it is solved (see :mod:`mmquant.quantization.one_pass`;
            same result as replays, about one forward pass of work in
            all). What the stopped passes hold counts against
            ``replay_cache_bytes``; ``replay_cache_bytes=0`` turns the one
            pass off too. ``False``: every layer replays. Defaults to
            True.
        seed (int): Seed of every random choice (row sampling, activation
            subsampling). Defaults to 0.
    """

    w_bits: int = 4
    a_bits: Optional[int] = 8
    method: str = 'bitsplit'
    first_last_bits: Optional[int] = 8
    overrides: Dict[str, Dict[str, Optional[int]]] = field(
        default_factory=dict)
    skip: List[str] = field(default_factory=list)
    error_compensation: bool = True
    calib_samples: Optional[int] = None
    rows_per_layer: Optional[int] = 16384
    max_rounds: int = 100
    schedule: str = 'integer'
    damping: float = 0.1
    damping_scales_with_rows: bool = True
    output_method: Optional[str] = None
    bn_reestimation: bool = False
    sensitivity: bool = False
    candidate_bits: List[int] = field(
        default_factory=lambda: [2, 3, 4, 8])
    target_bits: Optional[float] = None
    allocation_metric: str = 'network'
    allocation_samples: Optional[int] = 64
    act_samples: int = 1 << 18
    max_stats_bytes: Optional[int] = 2 << 30
    replay_cache_bytes: Optional[int] = 4 << 30
    one_pass: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_bits(self.w_bits, 'w_bits')
        if self.a_bits is not None:
            check_bits(self.a_bits, 'a_bits')
        if self.first_last_bits is not None:
            check_bits(self.first_last_bits, 'first_last_bits')
        if self.method not in WEIGHT_METHODS:
            raise ValueError(f'method must be one of {tuple(WEIGHT_METHODS)}'
                             f', got {self.method!r}')
        _refuse_foreign_options(self.method, [
            f.name for f in dataclasses.fields(self)
            if f.default is not dataclasses.MISSING
            and getattr(self, f.name) != f.default
        ])
        if not isinstance(self.overrides, Mapping):
            raise TypeError('overrides must be a dict {pattern: {w_bits, '
                            f'a_bits}}, got {type(self.overrides).__name__}')
        self.overrides = {
            str(pattern): _check_override(pattern, value)
            for pattern, value in self.overrides.items()
        }
        if isinstance(self.skip, str) or not isinstance(self.skip, Sequence):
            raise TypeError('skip must be a list of name patterns, got '
                            f'{self.skip!r}')
        self.skip = [str(p) for p in self.skip]
        for name in ('calib_samples', 'rows_per_layer', 'max_stats_bytes'):
            _check_positive(name, getattr(self, name), optional=True)
        if self.replay_cache_bytes is not None and (
                not isinstance(self.replay_cache_bytes, int)
                or isinstance(self.replay_cache_bytes, bool)
                or self.replay_cache_bytes < 0):
            raise ValueError('replay_cache_bytes must be an int >= 0 (0 '
                             'disables the replay cache) or None (no '
                             f'limit), got {self.replay_cache_bytes!r}')
        for name in ('max_rounds', 'act_samples'):
            _check_positive(name, getattr(self, name), optional=False)
        if self.output_method is not None:
            if self.output_method not in WEIGHT_METHODS:
                raise ValueError(
                    f'output_method must be one of {tuple(WEIGHT_METHODS)} '
                    f'or None, got {self.output_method!r}')
            if self.method == 'rtn' and self.output_method != 'rtn':
                raise ValueError(
                    f'output_method={self.output_method!r} needs '
                    "method='bitsplit' (an RTN run collects no statistics "
                    'to reconstruct outputs from)')
        if isinstance(self.candidate_bits, (str, int)) or not isinstance(
                self.candidate_bits, Sequence) or not self.candidate_bits:
            raise TypeError('candidate_bits must be a non-empty list of '
                            f'bit widths, got {self.candidate_bits!r}')
        for bits in self.candidate_bits:
            check_bits(bits, 'candidate_bits')
        self.candidate_bits = sorted(set(self.candidate_bits))
        if self.target_bits is not None:
            if isinstance(self.target_bits, bool) or not isinstance(
                    self.target_bits, (int, float)) or not \
                    2 <= self.target_bits <= 8:
                raise ValueError('target_bits must be a number in 2..8 '
                                 '(average bits per weight), got '
                                 f'{self.target_bits!r}')
            self.target_bits = float(self.target_bits)
        if self.allocation_metric not in ALLOCATION_METRICS:
            raise ValueError(
                'allocation_metric must be one of '
                f'{", ".join(map(repr, ALLOCATION_METRICS))}, got '
                f'{self.allocation_metric!r}')
        if self.allocation_samples is not None and (
                isinstance(self.allocation_samples, bool)
                or not isinstance(self.allocation_samples, int)
                or self.allocation_samples < 1):
            raise ValueError('allocation_samples must be a positive int or '
                             f'None, got {self.allocation_samples!r}')
        if self.method == 'rtn' and (self.sensitivity
                                     or self.target_bits is not None):
            raise ValueError(
                "sensitivity and target_bits need method='bitsplit': they "
                'measure output errors from its calibration statistics')
        for name in ('error_compensation', 'bn_reestimation',
                     'damping_scales_with_rows', 'sensitivity', 'one_pass'):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f'{name} must be True or False, got '
                                f'{getattr(self, name)!r}')
        if isinstance(self.damping, bool) or not isinstance(
                self.damping, (int, float)) or not 0 <= self.damping < 1e6:
            raise ValueError('damping must be a number >= 0, got '
                             f'{self.damping!r}')
        self.damping = float(self.damping)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise TypeError(f'seed must be an int, got {self.seed!r}')
        # the method checks its own options (e.g. the schedule's name)
        WEIGHT_METHODS[self.method].from_config(self)
        if self.output_method is not None:
            WEIGHT_METHODS[self.output_method].from_config(self)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any],
                  fixed: Sequence[str] = ()) -> 'QuantConfig':
        """Build a config from a dict, refusing unknown keys by name.

        Args:
            cfg (Mapping): Keyword arguments of :class:`QuantConfig`.
            fixed (Sequence[str]): Keys the caller sets itself (a
                quantizer's ``method``): the message about unknown keys
                neither lists nor suggests them.

        Returns:
            QuantConfig: The validated config.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            known -= set(fixed)
            hints = []
            for key in unknown:
                if key in _REPLACED:
                    hint = f' ({_REPLACED[key]})'
                else:
                    close = difflib.get_close_matches(key, sorted(known),
                                                      n=1)
                    hint = f' (did you mean {close[0]!r}?)' if close else ''
                hints.append(f'{key!r}{hint}')
            raise ValueError(
                f'unknown quantizer config key(s): {", ".join(hints)}; '
                f'valid keys: {", ".join(sorted(known))}')
        method = cfg.get('method', cls.method)
        if method in WEIGHT_METHODS:
            _refuse_foreign_options(method, list(cfg))
        return cls(**dict(cfg))

    def to_dict(self) -> Dict[str, Any]:
        """Return the config as a JSON-able dict."""
        return dataclasses.asdict(self)

    def resolve(self,
                names: Sequence[str],
                inputs: Union[str, Sequence[str], None] = None,
                outputs: Union[str, Sequence[str], None] = None
                ) -> Dict[str, Optional[LayerSpec]]:
        """Decide every layer's bits.

        ``first_last_bits`` applies to the input layers and the output
        layers (see :func:`mmquant.quantize` for how they are found); the
        input layers' inputs (the network input) always stay float.

        Args:
            names (Sequence[str]): The quantizable layers, in forward order.
            inputs (str | Sequence[str], optional): The input layers.
            outputs (str | Sequence[str], optional): The output layers.

        Returns:
            dict: ``{name: LayerSpec}``, ``None`` for skipped layers.

        Raises:
            ValueError: A skip or override pattern matches no layer.
        """
        inputs = _names(inputs)
        outputs = _names(outputs)
        specs: Dict[str, Optional[LayerSpec]] = {}
        for name in names:
            specs[name] = LayerSpec(self.w_bits, self.a_bits)
            if self.first_last_bits is not None and (name in inputs
                                                     or name in outputs):
                a_bits = None if self.a_bits is None else \
                    self.first_last_bits
                specs[name] = LayerSpec(self.first_last_bits, a_bits)
        for pattern, value in self.overrides.items():
            for name in _match(pattern, names, 'overrides'):
                spec = specs[name]
                specs[name] = LayerSpec(
                    value.get('w_bits', spec.w_bits),
                    value['a_bits'] if 'a_bits' in value else spec.a_bits)
        for name in inputs:
            if specs.get(name) is not None:
                # The network input stays float.
                specs[name] = LayerSpec(specs[name].w_bits, None)
        for pattern in self.skip:
            for name in _match(pattern, names, 'skip'):
                specs[name] = None
        return specs


def _refuse_foreign_options(method: str, keys: Sequence[str]) -> None:
    """Refuse options of other weight methods, naming their owner."""
    foreign = foreign_options(method, keys)
    if foreign:
        listed = ', '.join(f'{key!r} (an option of method {owner!r})'
                           for key, owner in sorted(foreign.items()))
        raise ValueError(
            f'method {method!r} does not use {listed}; remove '
            f'{"it" if len(foreign) == 1 else "them"} or choose that '
            'method')


def _names(value: Union[str, Sequence[str], None]) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _match(pattern: str, names: Sequence[str], where: str) -> List[str]:
    matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if not matched:
        shown = ', '.join(list(names)[:8])
        more = '' if len(names) <= 8 else f', ... ({len(names)} in all)'
        raise ValueError(
            f'{where} pattern {pattern!r} matches no quantizable layer; '
            f'layers are named like: {shown}{more}')
    return matched


def _check_override(pattern: Any, value: Any) -> Dict[str, Optional[int]]:
    if not isinstance(value, Mapping):
        raise TypeError(f'overrides[{pattern!r}] must be a dict with '
                        f'w_bits and/or a_bits, got {value!r}')
    unknown = sorted(set(value) - {'w_bits', 'a_bits'})
    if unknown:
        raise ValueError(f'overrides[{pattern!r}] has unknown key(s) '
                         f'{unknown}; valid: w_bits, a_bits')
    if 'w_bits' in value:
        check_bits(value['w_bits'], f'overrides[{pattern!r}].w_bits')
    if value.get('a_bits') is not None:
        check_bits(value['a_bits'], f'overrides[{pattern!r}].a_bits')
    return dict(value)


def _check_positive(name: str, value: Any, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name} must be a positive int'
                         f'{" or None" if optional else ""}, got {value!r}')
