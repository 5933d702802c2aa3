"""The shared solver problems and the direct port of the paper's solver
(:mod:`mmquant.testing`): the port and ``schedule='paper'`` agree."""
import pytest
import torch

from mmquant.core.solver import bitsplit_solve
from mmquant.testing import (direct_port, make_layer_problem, make_problem,
                             statistics_f64)


def test_make_problem_statistics_and_determinism():
    P = make_problem(12, 5, 40, seed=3)
    assert P['X'].shape == (40, 12) and P['W'].shape == (5, 12)
    assert P['W'].dtype == torch.float32 and P['A'].dtype == torch.float64
    torch.testing.assert_close(P['A'], P['X'].t() @ P['X'])
    torch.testing.assert_close(P['yy'], (P['Y'] * P['Y']).sum(0))
    assert bool((P['X'] == 0).any()) and bool((P['X'] >= 0).all())
    Q = make_problem(12, 5, 40, seed=3)
    assert all(torch.equal(P[k], Q[k]) for k in P)


def test_layer_problem_and_streamed_statistics():
    P = make_layer_problem(4, 6, 300, seed=0)
    X, Y, W = P['X'], P['Y'], P['W']
    assert X.shape == (300, 36) and Y.shape == (300, 6) and W.shape == (6, 36)
    # the targets are the conv outputs: Y = X W^T
    torch.testing.assert_close(Y, X @ W.t(), rtol=1e-4, atol=1e-5)
    A, C, yy = statistics_f64(X, Y, chunk=64)
    X64, Y64 = X.double(), Y.double()
    torch.testing.assert_close(A, X64.t() @ X64)
    torch.testing.assert_close(C, X64.t() @ Y64)
    torch.testing.assert_close(yy, (Y64 * Y64).sum(0))


@pytest.mark.parametrize('bits', [2, 3, 4])
@pytest.mark.parametrize('cin,cout,rows,dead', [(8, 8, 512, False),
                                                (4, 6, 256, True)])
def test_direct_port_equals_paper_schedule(bits, cin, cout, rows, dead):
    """From the same MSE-RTN start, ten rounds of the float32 port and of
    ``schedule='paper'`` on the float64 statistics give the same integers
    at every live input; an always-zero input gets zero bits from the port
    and keeps its initial integer in mmquant (the objective is the
    same)."""
    P = make_layer_problem(cin, cout, rows, seed=0)
    A, C, yy = statistics_f64(P['X'], P['Y'])
    port = direct_port(P['X'], P['Y'], P['W'], bits, 10)
    assert len(port['round_s']) == 10
    res = bitsplit_solve(P['W'], A, C, bits, yy, max_rounds=10,
                         schedule='paper')
    q = port['q'].to(torch.int8)
    live = torch.diagonal(A) > 0
    assert bool((~live).any()) == dead
    assert torch.equal(q[:, live], res.qweight[:, live])
    assert not bool(q[:, ~live].any())
    torch.testing.assert_close(port['scale'], res.scale, rtol=1e-4, atol=0)
