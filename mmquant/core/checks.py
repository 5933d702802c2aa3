"""Argument checks shared by the core modules (and the layer capture).

One place for the finiteness check of the solver, the statistics, the RTN
initialisation and the activation fitting (each keeps its own message), and
for turning a conv argument (an int or a tuple) into a pair.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ['check_finite', 'to_pair']


def check_finite(t: Tensor,
                 name: str,
                 consequence: str = '',
                 *,
                 plural: bool = False,
                 via_sum: bool = False) -> None:
    """Refuse a tensor that holds NaN or Inf.

    Args:
        t (Tensor): The tensor to check.
        name (str): What ``t`` is; the message starts with it.
        consequence (str): What cannot be done, appended to the message
            after ``'; '``. Defaults to nothing.
        plural (bool): Whether ``name`` is plural (``'inputs contain'``
            instead of ``'weight contains'``). Defaults to False.
        via_sum (bool): Check the sum instead of every element: one
            reduction instead of a mask, for large statistics. A NaN or
            Inf anywhere makes the sum non-finite (so does an overflow of
            the sum, which would be just as unusable). Defaults to False.

    Raises:
        ValueError: ``'<name> contains NaN or Inf[; <consequence>]'``.
    """
    if via_sum:
        finite = bool(torch.isfinite(t.sum()))
    else:
        finite = bool(torch.isfinite(t).all())
    if not finite:
        verb = 'contain' if plural else 'contains'
        tail = f'; {consequence}' if consequence else ''
        raise ValueError(f'{name} {verb} NaN or Inf{tail}')


def to_pair(value: Union[int, Sequence[int]],
            name: Optional[str] = None) -> Tuple[int, ...]:
    """A conv argument (stride, padding, ...) as a tuple.

    An int ``v`` and a 1-sequence ``(v, )`` become ``(v, v)``.

    Args:
        value (int | Sequence[int]): The argument.
        name (str, optional): The argument's name. If given, a longer
            ``value`` is checked: its items become ints and there must be
            2 or 4 of them (4: a padding ``(left, right, top, bottom)``),
            returned whole. If None (an argument torch already accepted),
            its first two items are returned as they are.

    Returns:
        tuple: The pair (or, with ``name``, the 4-tuple).

    Raises:
        ValueError: If ``name`` is given and ``value`` has neither 1, 2
            nor 4 items.
    """
    if isinstance(value, int):
        return (value, value)
    if name is None:
        value = tuple(value)
        return (value[0], value[0]) if len(value) == 1 else tuple(value[:2])
    value = tuple(int(x) for x in value)
    if len(value) == 1:
        return (value[0], value[0])
    if len(value) not in (2, 4):
        raise ValueError(f'{name} must be an int or a 2-tuple, got {value}')
    return value
