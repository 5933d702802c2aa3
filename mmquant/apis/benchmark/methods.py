"""The benchmark's vocabulary: its methods and bit-width tags.

A benchmark *method* is a key of :data:`METHODS`: the quantizer settings
merged over a model config's own ``quantizer``. A run is one method at one
bit-width tag (``'w4a8'``: 4-bit weights, 8-bit activations; ``'w4af'``:
float activations; ``'w3.5a8'``: a 3.5-bit average for mixed precision),
and :func:`method_quantizer` gives its settings. The tables here are the
only place the benchmark lists its methods: the runs, the Markdown titles,
the metafile metadata and the entry configs' file names all read them.
"""
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from mmquant.quantizers import quantizer_for

#: Quantizer settings of every benchmark method (merged over the model
#: config's own ``quantizer`` dict): a weight method of
#: :data:`~mmquant.quantization.methods.WEIGHT_METHODS` (its quantizer
#: from :func:`~mmquant.quantizers.quantizer_for`) in a mode.
METHODS: Dict[str, Dict[str, Any]] = {
    'rtn': quantizer_for('rtn'),
    'bitsplit-fast': dict(quantizer_for('bitsplit'),
                          error_compensation=False),
    'bitsplit': dict(quantizer_for('bitsplit'), error_compensation=True),
    # the bits tag's weight part is the average-bits target (w3.5a8)
    'bitsplit-fast-mixed': dict(quantizer_for('bitsplit'),
                                error_compensation=False),
    'bitsplit-mixed': dict(quantizer_for('bitsplit'),
                           error_compensation=True),
}
#: The methods whose bits tag gives ``target_bits`` instead of ``w_bits``.
MIXED_METHODS = ('bitsplit-fast-mixed', 'bitsplit-mixed')
#: How each method is named in tables.
METHOD_TITLES = {
    'float': 'float',
    'rtn': 'RTN',
    'bitsplit-fast': 'BitSplit (fast)',
    'bitsplit': 'BitSplit (EC)',
    'bitsplit-fast-mixed': 'BitSplit (fast, mixed)',
    'bitsplit-mixed': 'BitSplit (EC, mixed)',
}
#: Metadata of each method in a metafile entry (``Mode``: BitSplit only).
METHOD_METADATA: Dict[str, Dict[str, str]] = {
    'float': dict(Method='float'),
    'rtn': dict(Method='RTN'),
    'bitsplit-fast': dict(Method='BitSplit', Mode='fast'),
    'bitsplit': dict(Method='BitSplit', Mode='EC'),
    'bitsplit-fast-mixed': dict(Method='BitSplit',
                                Mode='fast, mixed precision'),
    'bitsplit-mixed': dict(Method='BitSplit', Mode='EC, mixed precision'),
}
#: How each method is named in the file names of entry configs.
METHOD_FILE_TAGS = {'rtn': 'rtn', 'bitsplit-fast': 'bitsplit-fast',
                    'bitsplit': 'bitsplit-ec',
                    'bitsplit-fast-mixed': 'bitsplit-fast-mixed',
                    'bitsplit-mixed': 'bitsplit-ec-mixed'}
#: The modes an ablation compares (keys of :data:`METHODS`).
ABLATION_MODES = ('bitsplit-fast', 'bitsplit')
#: Bit widths a benchmark list runs when it names none.
DEFAULT_BITS = ('w8a8', 'w4a8', 'w3a8', 'w2a8')
_BITS_RE = re.compile(r'^w([2-8](?:\.[0-9]+)?)a([2-8]|f)$')


def parse_bits(bits: str) -> Tuple[Union[int, float], Optional[int]]:
    """Parse ``'w4a8'`` into ``(4, 8)`` (``'w4af'``: float activations).

    A fractional weight part (``'w3.5a8'``) is a mixed-precision target,
    returned as a float; only :data:`MIXED_METHODS` accept it.

    Args:
        bits (str): The bit-width tag.

    Returns:
        tuple: ``(w_bits, a_bits or None)``.

    Raises:
        ValueError: If the tag is not ``w<2..8>a<2..8|f>``.
    """
    match = _BITS_RE.match(str(bits).lower())
    if match is None or not 2 <= float(match.group(1)) <= 8:
        raise ValueError(f'bad bit-width tag {bits!r}: expected '
                         "'w<2..8>a<2..8>' (e.g. 'w4a8') or 'w<2..8>af' "
                         "for float activations ('w3.5a8': an average for "
                         'bitsplit-mixed)')
    a = match.group(2)
    w = match.group(1)
    return (float(w) if '.' in w else int(w)), None if a == 'f' else int(a)


def method_quantizer(method: str, bits: str) -> Dict[str, Any]:
    """The quantizer settings of one benchmark run.

    Args:
        method (str): A key of :data:`METHODS`.
        bits (str): A bit-width tag.

    Returns:
        dict: :data:`METHODS` ``[method]`` with ``w_bits`` (or, for
        :data:`MIXED_METHODS`, ``target_bits``) and ``a_bits``.

    Raises:
        ValueError: For a fractional tag of a uniform method.
    """
    check_methods([method])
    w_bits, a_bits = parse_bits(bits)
    if method in MIXED_METHODS:
        return dict(METHODS[method], target_bits=float(w_bits),
                    a_bits=a_bits)
    if isinstance(w_bits, float):
        raise ValueError(f'{bits!r}: fractional weight bits are an '
                         f'average-bits target; method {method!r} needs '
                         'integer bits (use one of '
                         f'{list(MIXED_METHODS)})')
    return dict(METHODS[method], w_bits=w_bits, a_bits=a_bits)


def check_methods(methods: Sequence[str]) -> List[str]:
    """Validate method names.

    Args:
        methods (Sequence[str]): Keys of :data:`METHODS`.

    Returns:
        list[str]: The methods.
    """
    for method in methods:
        if method not in METHODS:
            raise ValueError(f'unknown benchmark method {method!r}; choose '
                             f'from {sorted(METHODS)}')
    return list(methods)
