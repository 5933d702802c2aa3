"""The symmetric product ``A = X^T X`` on the blocks on and above the
diagonal (:func:`mmquant.core.stats.add_gram_upper`).

Checks that do not hinge on the CPU's float kernels: the block edges, the
blocks below the diagonal being exact copies of those above, and ``A``
within float64 rounding of the full product (the summation order of a
block's kernel may differ from the whole matrix's).
"""
import pytest
import torch

from mmquant.core.stats import (GRAM_BLOCK, LayerGeometry, StatsAccumulator,
                                add_gram_upper, gram_blocks, mirror_upper)


@pytest.mark.parametrize('n,block,edges', [
    (9, 1024, [0, 9]),
    (1024, 1024, [0, 1024]),
    (1025, 1024, [0, 512, 1025]),
    (4608, 1024, [0, 922, 1843, 2765, 3686, 4608]),
    (10, 4, [0, 3, 7, 10]),
])
def test_gram_blocks(n, block, edges):
    assert gram_blocks(n, block) == edges
    got = gram_blocks(n, block)
    assert max(b - a for a, b in zip(got, got[1:])) <= block


def test_upper_blocks_then_mirror_equal_the_product():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50, 10, dtype=torch.float64, generator=gen)
    edges = gram_blocks(10, 4)
    A = torch.zeros(2, 10, 10, dtype=torch.float64)
    add_gram_upper(A, x, edges)
    # nothing below the diagonal blocks was computed
    assert torch.count_nonzero(A[:, 3:, :3]) == 0
    assert torch.count_nonzero(A[:, 7:, 3:7]) == 0
    mirror_upper(A, edges)
    ref = x.transpose(1, 2) @ x
    torch.testing.assert_close(A, ref, rtol=1e-12, atol=1e-12)
    for a0, a1, b0, b1 in ((0, 3, 3, 7), (0, 3, 7, 10), (3, 7, 7, 10)):
        assert torch.equal(A[:, b0:b1, a0:a1],
                           A[:, a0:a1, b0:b1].transpose(1, 2))


@pytest.mark.parametrize('groups', [1, 2])
def test_accumulator_over_several_blocks(groups):
    # N = 9 * 128 = 1152 per group: two blocks of GRAM_BLOCK columns
    cin = 128 * groups
    geom = LayerGeometry(kind='conv', in_channels=cin, out_channels=8,
                         kernel_size=(3, 3), groups=groups)
    n = geom.n_per_group
    assert n > GRAM_BLOCK
    acc = StatsAccumulator(geom)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, groups * n, generator=gen)
    y = torch.randn(300, 8, generator=gen)
    acc.update_rows(x[:100], y[:100])
    first = acc.A.clone()  # read (mirrored) between two updates
    acc.update_rows(x[100:], y[100:])
    xg = x.double().reshape(-1, groups, n).transpose(0, 1)
    ref = xg.transpose(1, 2) @ xg
    scale = float(ref.abs().max())
    assert float((acc.A - ref).abs().max()) <= 1e-13 * scale
    assert float((first - ref).abs().max()) > 1.0  # it did change
    edges = gram_blocks(n)
    assert torch.equal(acc.A[:, edges[1]:, :edges[1]],
                       acc.A[:, :edges[1], edges[1]:].transpose(1, 2))
    assert acc.n_rows == 300
