"""Activation scale fitting, fake quantization and the observer."""
import pytest
import torch

from mmquant.core.activation import (ActivationObserver, activation_grid,
                                     fake_quantize_activation,
                                     fit_activation_scale)


def naive_fit(x, lo, hi):
    x = x.double().reshape(-1)
    s = float(x.abs().max() if lo < 0 else x.max()) / hi
    prev = None
    for _ in range(1000):
        q = torch.clamp(torch.round(x / s), lo, hi)
        if prev is not None and torch.equal(q, prev):
            break
        s = float((x * q).sum() / (q * q).sum())
        prev = q
    return s


def check_fit(x, s, lo, hi, bits, signed):
    """``s`` is a fixed point of the alternation and no worse than the
    naive alternation started from the maximum."""
    v = x.double().reshape(-1)
    q = torch.clamp(torch.round(v / s), lo, hi)
    assert float((v * q).sum() / (q * q).sum()) == pytest.approx(s,
                                                                 rel=1e-9)
    naive = naive_fit(x, lo, hi)
    assert mse(x, s, bits, signed) <= mse(x, naive, bits,
                                          signed) * (1 + 1e-12)


def mse(x, s, bits, signed):
    return float(((fake_quantize_activation(x.double(), s, bits, signed) -
                   x.double())**2).sum())


@pytest.mark.parametrize('bits', [2, 4, 8])
def test_unsigned_fit_for_relu_data(bits):
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4000))
    s, signed = fit_activation_scale(x, bits)
    assert signed is False
    check_fit(x, s, 0, 2**bits - 1, bits, False)
    assert mse(x, s, bits, False) <= mse(x, float(x.max()) / (2**bits - 1),
                                         bits, False)


@pytest.mark.parametrize('bits', [3, 8])
def test_signed_fit_and_forced_grids(bits):
    torch.manual_seed(1)
    x = torch.randn(3000)
    s, signed = fit_activation_scale(x, bits)
    top = 2**(bits - 1) - 1
    assert signed is True
    check_fit(x, s, -top, top, bits, True)
    relu = torch.relu(x)
    s2, signed2 = fit_activation_scale(relu, bits, signed=True)
    assert signed2 is True
    check_fit(relu, s2, -top, top, bits, True)
    # forcing unsigned on signed data: negatives clip to zero
    s3, signed3 = fit_activation_scale(x, bits, signed=False)
    assert signed3 is False
    check_fit(x, s3, 0, 2**bits - 1, bits, False)


def test_degenerate_tensors():
    s, signed = fit_activation_scale(torch.zeros(10), 4)
    assert s == 1.0 and signed is False
    s, signed = fit_activation_scale(torch.full((10, ), 3.0), 4)
    assert s == pytest.approx(3.0 / 15) and signed is False
    s, signed = fit_activation_scale(torch.full((10, ), -3.0), 4)
    assert s == pytest.approx(3.0 / 7) and signed is True
    with pytest.raises(ValueError, match='NaN or Inf'):
        fit_activation_scale(torch.tensor([1.0, float('inf')]), 4)
    with pytest.raises(ValueError, match='NaN or Inf'):
        fit_activation_scale(torch.tensor([float('nan')]), 4)
    with pytest.raises(ValueError, match='empty'):
        fit_activation_scale(torch.zeros(0), 4)
    with pytest.raises(ValueError, match='bits must be an integer'):
        fit_activation_scale(torch.ones(3), 1)


def test_fake_quantize_activation_grid():
    x = torch.linspace(-3, 3, 101)
    out = fake_quantize_activation(x, 0.25, 3, signed=True)
    q = out / 0.25
    assert torch.equal(q, q.round())
    assert float(q.min()) == -3 and float(q.max()) == 3
    out = fake_quantize_activation(x, torch.tensor(0.25), 3, signed=False)
    assert float(out.min()) == 0 and float((out / 0.25).max()) == 7
    assert out.dtype == x.dtype
    assert activation_grid(4, True) == (-7, 7)
    assert activation_grid(4, False) == (0, 15)
    for bad in (0.0, -1.0, float('nan'), float('inf')):
        with pytest.raises(ValueError, match='finite and positive'):
            fake_quantize_activation(x, bad, 4, True)


def test_observer_small_data_equals_direct_fit():
    torch.manual_seed(2)
    xs = [torch.relu(torch.randn(8, 16)) for _ in range(3)]
    obs = ActivationObserver(max_samples=10000)
    for x in xs:
        obs.update(x)
    assert obs.count == 3 * 128 and obs.min == 0.0
    assert obs.fit(4) == fit_activation_scale(torch.cat(xs), 4)


def test_observer_bounded_and_seeded():
    torch.manual_seed(3)
    xs = [torch.randn(5000) * (1 + i) for i in range(4)]

    def run(seed):
        obs = ActivationObserver(max_samples=2000,
                                 generator=torch.Generator().manual_seed(seed))
        for x in xs:
            obs.update(x)
        return obs

    a, b = run(0), run(0)
    assert a.samples.numel() == 2000
    assert torch.equal(a.samples, b.samples)
    assert a.max == float(torch.cat(xs).max())
    s, signed = a.fit(4)
    s_full, _ = fit_activation_scale(torch.cat(xs), 4)
    assert signed is True
    assert s == pytest.approx(s_full, rel=0.1)
    with pytest.raises(ValueError, match='before update'):
        ActivationObserver().fit(4)
    with pytest.raises(ValueError, match='NaN or Inf'):
        a.update(torch.tensor([float('nan')]))


@pytest.mark.parametrize('signed', [True, False])
def test_fake_quantize_in_place_path_equals_the_graph_path(signed):
    # without autograd the rounding, clipping and scaling run in place;
    # with it, out of place: the same operations, the same bits
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    x = x * 4 - 1
    before = x.clone()
    plain = fake_quantize_activation(x, 0.05, 4, signed)
    graph = fake_quantize_activation(x.clone().requires_grad_(True), 0.05,
                                     4, signed)
    assert graph.grad_fn is not None and plain.grad_fn is None
    assert torch.equal(plain.view(torch.int32),
                       graph.detach().view(torch.int32))
    assert torch.equal(x, before)  # the input is left as it was
