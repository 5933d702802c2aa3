"""Sensitivity (every width from one set of statistics) and mixed
precision under an average-bits budget."""
import copy
import itertools
import random

import pytest
import torch

import mmquant
from mmquant import QuantConfig
from mmquant.nn import QuantizedLayer
from mmquant.quantization.mixed_precision import GRID_STEPS, allocate_bits
from mmquant.quantization.distributed import leading_batches
from mmquant.quantization.sensitivity import network_sensitivity

from .models import TinyNet, init_model, smooth_images


def batches():
    return list(smooth_images(32, 16, 0).split(8))


def quiet(msg):
    pass


@pytest.fixture(scope='module')
def tiny():
    return init_model(TinyNet())


def brute_force(errors, costs, budget):
    best = None
    for picks in itertools.product(*[range(len(e)) for e in errors]):
        cost = sum(c[k] for c, k in zip(costs, picks))
        if cost <= budget:
            err = sum(e[k] for e, k in zip(errors, picks))
            if best is None or err < best:
                best = err
    return best


def random_instance(rng, n_items, big):
    errors, costs = [], []
    widths = [2, 3, 4, 8]
    for _ in range(n_items):
        params = rng.randint(10**5, 10**7) if big else rng.randint(1, 300)
        e = sorted((rng.random() for _ in widths), reverse=True)
        errors.append(e)
        costs.append([params * w for w in widths])
    lo = sum(c[0] for c in costs)
    hi = sum(c[-1] for c in costs)
    return errors, costs, rng.randint(lo, hi)


@pytest.mark.parametrize('big', [False, True])
def test_allocation_matches_brute_force(big):
    """Small costs: the exact integer grid gives the optimum itself. Large
    costs (millions of parameters, > GRID_STEPS steps): costs rounded up
    to the grid, always within budget and within 1 % of the optimum."""
    rng = random.Random(0)
    worst = 0.0
    for _ in range(60):
        errors, costs, budget = random_instance(rng, 6, big)
        if big:
            assert budget > GRID_STEPS  # the rounded grid is exercised
        picks, total = allocate_bits(errors, costs, budget)
        assert sum(c[k] for c, k in zip(costs, picks)) <= budget
        assert total == pytest.approx(
            sum(e[k] for e, k in zip(errors, picks)))
        opt = brute_force(errors, costs, budget)
        if big:
            worst = max(worst, total / opt - 1)
        else:
            assert total == pytest.approx(opt, rel=1e-12)
    assert worst <= 0.01


def test_allocation_ties_and_bad_input():
    # equal errors: the least cost wins, then the earlier option of the
    # later item
    assert allocate_bits([[1.0, 1.0]], [[2, 3]], 3) == ([0], 1.0)
    assert allocate_bits([[2.0, 1.0], [2.0, 1.0]], [[1, 2], [1, 2]],
                         3) == ([1, 0], 3.0)
    with pytest.raises(ValueError, match='below the cheapest choice'):
        allocate_bits([[1.0, 0.5]], [[4, 8]], 3)
    with pytest.raises(ValueError, match='one non-empty row'):
        allocate_bits([[1.0]], [[1, 2]], 3)


def test_sensitivity_equals_runs_at_each_width(tiny):
    """The error a sensitivity run records at width b is exactly the
    error of a run at width b (fast mode: the same statistics)."""
    common = dict(a_bits=8, error_compensation=False)
    _, rep = mmquant.quantize(tiny, batches(), QuantConfig(
        w_bits=4, sensitivity=True, **common), logger=quiet)
    rows = {r.name: r for r in rep.layers}
    for bits in (2, 3, 8):
        _, at = mmquant.quantize(tiny, batches(), QuantConfig(
            w_bits=bits, **common), logger=quiet)
        for r in at.layers:
            if r.role is None:  # first_last_bits keeps the others at 8
                assert rows[r.name].sensitivity[str(bits)] == r.rel_error
    for r in rep.layers:
        assert r.sensitivity[str(r.w_bits)] == r.rel_error
        assert r.sensitivity['8'] < r.sensitivity['4'] < \
            r.sensitivity['2'], r.name


@pytest.mark.parametrize('ec, metric', [(False, 'layer'), (True, 'layer'),
                                        (True, 'network')])
def test_target_bits_chooses_widths_within_budget(tiny, ec, metric):
    cfg = QuantConfig(target_bits=3.0, error_compensation=ec,
                      allocation_metric=metric)
    qmodel, rep = mmquant.quantize(tiny, batches(), cfg, logger=quiet)
    plan = rep.extra['mixed_precision']
    layers = {n: m for n, m in qmodel.named_modules()
              if isinstance(m, QuantizedLayer)}
    params = {n: m.qweight.numel() for n, m in layers.items()}
    widths = {n: m.w_bits for n, m in layers.items()}
    assert widths == {**plan['bits'], **plan['fixed']}
    assert plan['fixed'] == {'stem': 8, 'head': 8}
    average = sum(params[n] * widths[n] for n in widths) / sum(
        params.values())
    assert average == pytest.approx(plan['average_bits'], abs=1e-6)
    assert average <= 3.0
    assert len(set(plan['bits'].values())) > 1  # really mixed
    assert rep.config['target_bits'] == 3.0
    assert rep.mode == ('error_compensated' if ec else 'fast')
    assert plan['metric'] == metric
    # the allocation minimises the probe's summed squared errors
    key = 'sensitivity' if metric == 'layer' else 'network_sensitivity'
    errors = [[getattr(r, key)[str(b)] ** 2 for b in (2, 3, 4, 8)]
              for r in rep.layers if r.name in plan['bits']]
    assert plan['error'] == pytest.approx(brute_force(
        errors, [[params[n] * b for b in (2, 3, 4, 8)]
                 for n in plan['bits']],
        int(3.0 * sum(params.values()))
        - 8 * (params['stem'] + params['head'])))


def test_target_bits_fast_equals_overrides(tiny):
    """Fast mode: the mixed run is the plain run with the chosen widths
    as overrides (the probe changes nothing but the widths)."""
    q1, rep = mmquant.quantize(tiny, batches(), QuantConfig(
        target_bits=3.5, error_compensation=False), logger=quiet)
    overrides = {n: dict(w_bits=b)
                 for n, b in rep.extra['mixed_precision']['bits'].items()}
    q2, _ = mmquant.quantize(tiny, batches(), QuantConfig(
        error_compensation=False, overrides=overrides), logger=quiet)
    for (n, a), (_, b) in zip(q1.named_modules(), q2.named_modules()):
        if isinstance(a, QuantizedLayer):
            assert torch.equal(a.qweight, b.qweight), n
            assert torch.equal(a.weight_scale, b.weight_scale), n


def test_target_below_what_the_model_allows(tiny):
    with pytest.raises(ValueError, match='target_bits=2.0 is below the '
                       'smallest average this model allows'):
        mmquant.quantize(tiny, batches(), QuantConfig(target_bits=2.0),
                         logger=quiet)


@pytest.mark.parametrize('cfg, error, match', [
    (dict(target_bits=1.5), ValueError, 'target_bits must be a number in '
     '2..8'),
    (dict(candidate_bits=[2, 9]), ValueError, 'candidate_bits must be an '
     'integer in 2..8'),
    (dict(candidate_bits=4), TypeError, 'candidate_bits must be a '
     'non-empty list'),
    (dict(method='rtn', sensitivity=True), ValueError,
     "sensitivity and target_bits need method='bitsplit'"),
    (dict(allocation_metric='hessian'), ValueError,
     "allocation_metric must be one of 'network', 'layer', got 'hessian'"),
    (dict(allocation_samples=0), ValueError,
     'allocation_samples must be a positive int or None, got 0'),
    (dict(allocation_samples=True), ValueError,
     'allocation_samples must be a positive int or None, got True'),
])
def test_bad_mixed_precision_config(cfg, error, match):
    with pytest.raises(error, match=match):
        QuantConfig(**cfg)


@pytest.mark.parametrize('bits', [2, 4])
def test_network_sensitivity_is_the_one_layer_change(tiny, bits):
    """D_l(b) is the relative squared change of the float network's
    output with layer l alone replaced by its integers at width b (the
    fast-mode integers of a run at width b), on the first
    ``allocation_samples`` samples (whole batches: 10 -> 16)."""
    _, rep = mmquant.quantize(tiny, batches(), QuantConfig(
        target_bits=3.5, error_compensation=False, allocation_samples=10),
        logger=quiet)
    assert rep.extra['mixed_precision']['probe_samples'] == 16
    qat, _ = mmquant.quantize(tiny, batches(), QuantConfig(
        w_bits=bits, error_compensation=False), logger=quiet)
    probe = batches()[:2]
    with torch.no_grad():
        ref = [tiny(b).double() for b in probe]
    energy = sum(float(r.pow(2).sum()) for r in ref)
    free = rep.extra['mixed_precision']['bits']
    for name in ('dw', 'grouped', 'same', 'pw'):
        assert name in free
        q = qat.get_submodule(name)
        model = copy.deepcopy(tiny)
        setattr(model, name, QuantizedLayer(
            getattr(tiny, name), q.qweight, q.weight_scale, bits))
        with torch.no_grad():
            change = sum(float((model(b).double() - r).pow(2).sum())
                         for b, r in zip(probe, ref))
        got = {r.name: r for r in rep.layers}[name].network_sensitivity
        assert got[str(bits)] ** 2 == pytest.approx(change / energy,
                                                    rel=1e-9)
    # the input/output layers keep first_last_bits: not probed
    fixed = {r.name: r for r in rep.layers}
    assert fixed['stem'].network_sensitivity is None
    assert fixed['head'].network_sensitivity is None


def test_network_probe_leaves_the_model_unchanged(tiny):
    """The probe swaps each layer out and back, also when the forward
    fails; the outputs' tensors must keep their shapes."""
    from mmquant.quantization.plan import LayerPlan
    model = copy.deepcopy(tiny)
    before = {n: m for n, m in model.named_modules()}
    layer = LayerPlan('pw', model.pw, 0)
    q = torch.ones_like(model.pw.weight, dtype=torch.int8)
    cands = {'pw': {4: (q, torch.full((32, ), 0.01))}}
    changes, energy = network_sensitivity(
        model, [layer], cands, [4], batches()[:1], lambda m, b: m(b),
        logger=quiet)
    assert changes.shape == (1, 1, 1, 1) and energy.shape == (1, 1)
    assert float(changes[0, 0, 0, 0]) > 0
    assert {n: m for n, m in model.named_modules()} == before

    calls = []

    def flaky(m, b):
        calls.append(1)
        if len(calls) > 1:  # the float reference runs, the probe fails
            raise RuntimeError('boom')
        return m(b)

    with pytest.raises(RuntimeError, match='boom'):
        network_sensitivity(model, [layer], cands, [4], batches()[:1],
                            flaky, logger=quiet)
    assert {n: m for n, m in model.named_modules()} == before

    shapes = iter([torch.zeros(2, 3), torch.zeros(2, 4)])
    with pytest.raises(ValueError, match="outputs changed shape with 'pw' "
                       'at W4'):
        network_sensitivity(model, [layer], cands, [4], batches()[:1],
                            lambda m, b: next(shapes), logger=quiet)
    assert model.pw is before['pw']
    with pytest.raises(ValueError, match='returned no floating-point '
                       'tensor'):
        network_sensitivity(model, [layer], cands, [4], batches()[:1],
                            lambda m, b: [torch.ones(2, dtype=torch.long)],
                            logger=quiet)
    outs = iter([[torch.ones(2)], [torch.ones(2), torch.ones(2)]])
    with pytest.raises(ValueError, match='returned 1 floating-point tensors '
                       'for the first probe batch and 2 for another'):
        network_sensitivity(model, [layer], cands, [4], batches()[:2],
                            lambda m, b: next(outs), logger=quiet)


def test_output_tensors_count_alike():
    """Each output tensor's change is relative to its own energy, then
    averaged: a small-scale output (box deltas) counts as much as a
    large-scale one (logits); an all-zero output is left out."""
    from mmquant.quantization.sensitivity import relative_change
    from mmquant.quantization.plan import LayerPlan

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 3)
            self.b = torch.nn.Linear(4, 3)

        def forward(self, x):
            return 1000 * self.a(x), 0.001 * self.b(x), torch.zeros(2)

    torch.manual_seed(0)
    model = TwoHeads()
    x = [torch.randn(5, 4), torch.randn(3, 4)]
    layers = [LayerPlan('a', model.a, 0), LayerPlan('b', model.b, 1)]
    cands = {n: {4: (torch.ones(3, 4, dtype=torch.int8),
                     torch.full((3, ), 0.1))} for n in ('a', 'b')}
    changes, energy = network_sensitivity(model, layers, cands, [4], x,
                                          lambda m, b: m(b), logger=quiet)
    assert changes.shape == (2, 2, 1, 3) and energy.shape == (2, 3)
    d = relative_change(changes, energy)
    with torch.no_grad():
        for j, name in enumerate(('a', 'b')):
            ref = [model(b)[j].double() for b in x]
            q = torch.full((3, 4), 0.1).double()
            lin = getattr(model, name)
            scale = 1000 if name == 'a' else 0.001
            got = [scale * (b.double() @ q.T + lin.bias.double())
                   for b in x]
            change = sum(float((g - r).pow(2).sum())
                         for g, r in zip(got, ref))
            rel = change / sum(float(r.pow(2).sum()) for r in ref)
            # the other head does not move: its term is 0; the zero
            # output is left out: the mean is over 2 tensors
            assert float(d[j, 0]) == pytest.approx(rel / 2, rel=1e-6)
    with pytest.raises(ValueError, match='float outputs are all zero'):
        relative_change(changes, torch.zeros_like(energy))


def test_leading_batches_takes_whole_leading_batches():
    assert leading_batches([8, 8, 8], None) == 3
    assert leading_batches([8, 8, 8], 8) == 1
    assert leading_batches([8, 8, 8], 9) == 2
    assert leading_batches([8, 8, 8], 100) == 3
