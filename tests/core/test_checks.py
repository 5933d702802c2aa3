"""The argument checks shared by the core modules and the layer capture."""
import re

import pytest
import torch

from mmquant.core.checks import check_finite, to_pair


def test_check_finite_passes_finite_tensors():
    check_finite(torch.tensor([0.0, -1.5, 3e38]), 'weight')
    check_finite(torch.zeros(0), 'weight', via_sum=True)


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_check_finite_messages(bad):
    t = torch.tensor([1.0, bad])
    with pytest.raises(ValueError, match=r'^weight contains NaN or Inf$'):
        check_finite(t, 'weight')
    with pytest.raises(ValueError, match=re.escape(
            'inputs contain NaN or Inf; cannot accumulate statistics')):
        check_finite(t, 'inputs', 'cannot accumulate statistics',
                     plural=True)
    with pytest.raises(ValueError, match='A contains NaN or Inf; refusing'):
        check_finite(t, 'A', 'refusing', via_sum=True)


def test_check_finite_via_sum_also_refuses_an_overflowing_sum():
    """The solver's check reduces to one sum: finite values whose sum
    overflows are refused too (they would be as unusable); the element
    check accepts them."""
    big = torch.full((4, ), 3e38)
    check_finite(big, 'A')
    with pytest.raises(ValueError, match='A contains NaN or Inf'):
        check_finite(big, 'A', via_sum=True)


def test_to_pair_checked():
    assert to_pair(3, 'stride') == (3, 3)
    assert to_pair((2, ), 'stride') == (2, 2)
    assert to_pair([1, 2], 'stride') == (1, 2)
    assert to_pair(torch.Size([1, 2, 3, 4]), 'padding') == (1, 2, 3, 4)
    out = to_pair((torch.tensor(2), 3), 'stride')
    assert out == (2, 3) and all(type(v) is int for v in out)
    with pytest.raises(ValueError, match=re.escape(
            'dilation must be an int or a 2-tuple, got (1, 2, 3)')):
        to_pair((1, 2, 3), 'dilation')
    with pytest.raises(ValueError, match='kernel_size must be'):
        to_pair((), 'kernel_size')


def test_to_pair_unchecked_keeps_the_first_two():
    """Without a name (an argument torch already accepted) the value is
    not checked: longer sequences are cut to two items, kept as they
    are."""
    assert to_pair(3) == (3, 3)
    assert to_pair([4]) == (4, 4)
    assert to_pair((1, 2, 3)) == (1, 2)
    t = torch.tensor(2)
    assert to_pair((t, 5))[0] is t
