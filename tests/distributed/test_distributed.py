"""Distributed calibration (issue 18): ranks over gloo give the
single-process model.

Every multi-process test runs the same case on 1 rank (no process group)
and on 2 or 3 ranks, each rank quantizing its contiguous shard of the
calibration batches with :func:`mmquant.quantize`, and compares every
rank's quantized layers with the single-process ones: integers, weight
scales and activation scales bit for bit, and the activation observers'
samples value for value. The float64 statistics are summed over the ranks
in another order than one process sums them, so the report's objectives
may differ in the last bits (checked to 1e-9 relative); the float32
scales of these cases come out identical.
"""
import os.path as osp
from typing import Any, Dict, List

import pytest
import torch

from mmquant.core.activation import ActivationObserver
from mmquant.quantization.distributed import reservoir_indices, shard_range

from .conftest import spawn

TINY = dict(case='tiny', samples=24, batch_size=4)
#: Row sampling and a subsampling reservoir are both exercised: 6 batches
#: of 4 16x16 images, 1024+ rows per call, 256 rows per layer, 500 of
#: 4096+ activation values kept.
TINY_CONFIG = dict(w_bits=4, a_bits=8, rows_per_layer=256,
                   act_samples=500, max_rounds=10)


def assert_same_model(ref: Dict[str, Any], got: Dict[str, Any],
                      rank: int) -> None:
    """Integers, scales, observer samples and report of one rank equal
    the single-process run's."""
    assert ref['rc'] == 0, ref['log']
    assert got['rc'] == 0, got['log']
    assert sorted(got['layers']) == sorted(ref['layers'])
    assert len(ref['layers']) >= 5
    for name, want in ref['layers'].items():
        have = got['layers'][name]
        for key in ('qweight', 'weight_scale', 'act_scale'):
            assert torch.equal(want[key], have[key]), (rank, name, key)
    for name, samples in got['samples'].items():
        assert torch.equal(samples, ref['samples'][name]), (rank, name)
    reps = zip(ref['report']['layers'], got['report']['layers'])
    for want, have in reps:
        assert want['name'] == have['name']
        for key in ('w_bits', 'a_bits', 'act_scale', 'act_signed', 'calls',
                    'rows', 'rounds', 'role', 'note', 'replay_from',
                    'network_sensitivity'):
            assert want[key] == have[key], (rank, want['name'], key)
        for key in ('objective', 'objective_rtn'):
            if want[key] is not None:
                assert have[key] == pytest.approx(want[key], rel=1e-9,
                                                  abs=1e-12)
    assert got['report']['calib_samples'] == ref['report']['calib_samples']
    mixed = [r['report']['extra'].get('mixed_precision', {})
             for r in (ref, got)]
    for key in ('bits', 'fixed', 'average_bits', 'error', 'metric',
                'probe_samples'):
        assert mixed[0].get(key) == mixed[1].get(key), key


def run_case(spec: Dict[str, Any], world: int,
             tmp: str) -> Dict[str, Any]:
    """Run ``spec`` on 1 and on ``world`` ranks, compare every rank with
    the single process; return the single process's result."""
    ref = spawn(spec, 1, tmp)[0]
    results: List[Dict[str, Any]] = spawn(spec, world, tmp)
    # every layer's observer samples were recorded on some rank
    seen = set().union(*(r['samples'] for r in results))
    assert seen == set(ref['samples']) and seen
    for rank, got in enumerate(results):
        assert_same_model(ref, got, rank)
    return ref


# ----------------------------------------------------------- one process
def test_shard_range_covers_the_batches_in_rank_order():
    blocks = [shard_range(7, r, 3) for r in range(3)]
    assert blocks == [(0, 3), (3, 5), (5, 7)]
    assert [shard_range(4, r, 2) for r in range(2)] == [(0, 2), (2, 4)]
    with pytest.raises(ValueError, match='2 calibration batch.*3 processes'):
        shard_range(2, 0, 3)


@pytest.mark.parametrize('numels', [[5, 0, 7, 3], [40, 30, 1, 64, 9],
                                    [3, 4], [100]])
def test_reservoir_indices_match_the_observer(numels):
    max_samples = 16
    obs = ActivationObserver(max_samples,
                             torch.Generator().manual_seed(5))
    start = 0
    for n in numels:
        obs.update(torch.arange(start, start + n, dtype=torch.float32))
        start += n
    kept = reservoir_indices(numels, max_samples,
                             torch.Generator().manual_seed(5))
    assert torch.equal(kept.to(torch.float64), obs.samples)


# ------------------------------------------------------------ processes
@pytest.mark.parametrize('mode', ['fast', 'ec', 'mixed', 'mixed-rank0'])
def test_tiny_two_ranks_equal_one(tmp_path, mode):
    # calib_samples=20 of 24: the cut falls in rank 1's shard; 'mixed':
    # a fast sensitivity pass, the network probe on the first 16 samples
    # (rank 0's 12 and one batch of rank 1's), the allocation, an EC run;
    # 'mixed-rank0': the probe's 8 samples are all rank 0's
    config = dict(TINY_CONFIG, calib_samples=20,
                  error_compensation=mode != 'fast')
    probe = dict(mixed=16, fast=None, ec=None)
    probe['mixed-rank0'] = 8
    if probe[mode]:
        config.update(target_bits=3.5, allocation_samples=probe[mode])
    ref = run_case(dict(TINY, config_dict=config), 2, str(tmp_path))
    if probe[mode]:
        mixed = ref['report']['extra']['mixed_precision']
        assert mixed['metric'] == 'network'
        assert mixed['probe_samples'] == probe[mode]


def test_tiny_three_ranks_equal_one(tmp_path):
    config = dict(TINY_CONFIG, error_compensation=True)
    run_case(dict(TINY, samples=28, config_dict=config), 3, str(tmp_path))


@pytest.mark.parametrize('mode', ['fast', 'ec'])
def test_retinanet_two_ranks_equal_one(tmp_path, retinanet, mode):
    config = dict(w_bits=4, a_bits=8, rows_per_layer=512, max_rounds=10,
                  act_samples=1 << 12, error_compensation=mode == 'ec')
    spec = dict(case='det', samples=8, batch_size=2, config_dict=config,
                **retinanet)
    run_case(spec, 2, str(tmp_path))


def test_crash_on_rank_1_fails_rank_0_naming_it(tmp_path):
    spec = dict(TINY, config_dict=TINY_CONFIG, crash_rank=1)
    rank0, rank1 = spawn(spec, 2, str(tmp_path))
    assert rank1['rc'] == 1
    assert rank1['error'] == 'RuntimeError: injected failure'
    assert rank0['rc'] == 1
    assert rank0['error'].startswith('DistributedRunError: distributed '
                                     'calibration stopped on rank 0: rank '
                                     '1 failed: RuntimeError: injected '
                                     'failure'), rank0['error']
    assert 'layers' not in rank0
    assert osp.isfile(osp.join(str(tmp_path), 'world2_rank0.pt'))


def test_bn_reestimation_is_refused_on_every_rank(tmp_path):
    spec = dict(TINY, config_dict=dict(TINY_CONFIG, bn_reestimation=True))
    for result in spawn(spec, 2, str(tmp_path)):
        assert result['rc'] == 1
        assert result['error'] == (
            'ValueError: a distributed calibration supports neither a '
            'resume journal nor bn_reestimation')
