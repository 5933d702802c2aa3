"""Error-compensated replay from cached module boundaries.

The cache must never change a result: every model here is quantized with
the cache (default and tight budgets) and without it
(``replay_cache_bytes=0``: every layer's pass starts at the network input,
the behaviour before the cache), and the quantized models must be equal
bit for bit.  The models exercise what can break a replay: a block used
twice, a conv that pads inside its forward, a block that changes its
input in place, list/keyword inputs and dict outputs, a module called
through ``.forward`` (no hooks), and a block whose forward depends on
state its parent sets before each call.
"""
import re

import pytest
import torch
from torch import nn

import mmquant
from mmquant import QuantConfig
from mmquant.quantization.replay import cacheable, rebuild

from .ec_models import (AttnNet, Block, HardNet, Twice, assert_same,
                        int_bytes, make_batches, quantize_ec)
from .models import DeepNet, TinyNet, init_model


@pytest.fixture(scope='module')
def hard():
    return init_model(HardNet())


@pytest.fixture(scope='module')
def hard_full(hard):
    return quantize_ec(hard, 0)


@pytest.mark.parametrize('a_bits', [8, None])
def test_hard_model_bit_exact(hard, hard_full, a_bits, tmp_path):
    full = hard_full if a_bits == 8 else quantize_ec(hard, 0, a_bits)
    logs = []
    run = quantize_ec(hard, None, a_bits, logs)
    assert_same(run, full)
    assert int_bytes(run[0], tmp_path / 'a.pth') == int_bytes(
        full[0], tmp_path / 'b.pth')

    rep = {lay.name: lay for lay in run[1].layers}
    # a block used twice is no boundary: its layer replays from the input
    assert rep['shared.conv'].replay_from == '<input>'
    assert "'shared' runs 2 time(s) per pass, not once" in \
        rep['shared.conv'].replay_note
    assert rep['stem.conv'].replay_from == 'stem'
    # blocks inside the Sequential: the first layer of block i starts at
    # the suffix stage[i-1:] (block i-1's cached input, then the blocks
    # from i-1 on); stage.2 changes its input in place, which invalidates
    # that cached input, and block 1's is no longer kept (no layer was
    # expected to need it), so stage.3.conv starts at the stage
    assert rep['stage.1.conv'].replay_from == 'stage'
    assert rep['stage.2.conv'].replay_from == 'stage[1:]'
    assert rep['stage.3.conv'].replay_from == 'stage'
    assert rep['stage.0.conv'].replay_from == '<input>'
    assert rep['stage.0.conv'].replay_note == \
        'no enclosing module has cached inputs yet'
    # list + keyword inputs: the neck's later layers start at the neck
    assert rep['neck.lateral.1.conv'].replay_from == 'neck'
    assert rep['neck.out'].replay_from == 'neck'
    # a forward called directly runs no hooks: from the input
    assert rep['direct.conv'].replay_from == '<input>'
    assert 'forward is called directly' in rep['direct.conv'].replay_note
    # the gated block runs its second conv in the first batch only when it
    # is replayed alone: the step falls back to the network input (the
    # first batch's activation samples are undone), and says so
    assert rep['gated.conv2'].replay_from == '<input>'
    assert rep['gated.conv2'].replay_note == (
        "replay from 'gated' abandoned: 'gated.conv2' did not run its 1 "
        "call(s) inside 'gated' for batch 1")
    assert any(m.startswith('mmquant: gated.conv2: replay from') and
               m.endswith('replaying from the network input')
               for m in logs)
    # a boundary that raises when run alone: that step and every later
    # one start at the network input
    assert rep['fragile.conv2'].replay_from == '<input>'
    assert rep['fragile.conv2'].replay_note == (
        "replay from 'fragile' raised KeyError: 'scale'; module replays "
        'are off for the rest of the run')
    assert rep['head'].replay_note == (
        "module replays off since 'fragile.conv2': replay from 'fragile' "
        "raised KeyError: 'scale'")
    assert run[1].replay['from_module'] >= 4
    assert run[1].replay['cache_peak_bytes'] > 0
    # the per-layer log line: where from, elapsed time and an ETA
    lines = [m for m in logs if m.startswith('mmquant: [')]
    assert len(lines) == len(run[1].quantized_layers)
    assert re.search(r"\[5/\d+\] stage\.1\.conv: .* inputs from "
                     r"'stage', [\d.]+s elapsed, ETA [\d.]+s$", lines[4])
    assert lines[-1].endswith('ETA 0.0s')


@pytest.mark.parametrize('budget', [1, 20000, 60000])
def test_tight_budget_is_exact_and_says_so(hard, hard_full, budget):
    logs = []
    run = quantize_ec(hard, budget, logs=logs)
    assert_same(run, hard_full)
    info = run[1].replay
    assert info['cache_peak_bytes'] <= budget
    assert info['refused_entries'] > 0
    full_msgs = [m for m in logs if 'replay cache full' in m]
    assert len(full_msgs) == 1
    assert f'replay_cache_bytes={budget / 2**20:.1f} MiB' in full_msgs[0]
    assert 'exact, slower' in full_msgs[0]
    if budget == 1:
        assert info['from_module'] == 0


def test_disabled_cache_replays_from_input(hard_full):
    report = hard_full[1]
    assert report.replay['from_module'] == 0
    assert report.replay['cache_budget_bytes'] == 0
    for lay in report.quantized_layers:
        assert lay.replay_from == '<input>'
        assert lay.replay_note == \
            'replay cache disabled (replay_cache_bytes=0)'


def test_tiny_net_bit_exact():
    model = init_model(TinyNet())  # no boundary: all from the input
    run = quantize_ec(model, None)
    assert_same(run, quantize_ec(model, 0))
    assert run[1].replay['from_module'] == 0


def test_sequential_of_layers_starts_at_suffixes():
    # conv, relu, conv, relu ...: conv j + 1 starts at the suffix from the
    # relu after conv j - 1 (the last input cached by an earlier pass)
    model = init_model(DeepNet())
    run = quantize_ec(model, None)
    assert_same(run, quantize_ec(model, 0))
    got = [lay.replay_from for lay in run[1].quantized_layers]
    assert got == ['features', 'features', 'features[1:]', 'features[3:]',
                   'features[5:]', 'features[7:]', 'features[9:]',
                   '<input>']


def test_layer_used_twice_inside_a_boundary():
    model = init_model(nn.Sequential(Block(3, 8), Twice(8), Twice(8)))
    run = quantize_ec(model, None)
    assert_same(run, quantize_ec(model, 0))
    got = {lay.name: (lay.calls, lay.replay_from)
           for lay in run[1].quantized_layers}
    assert got == {'0.conv': (1, '0'), '1.conv0': (1, '<input>'),
                   '1.conv': (2, '1'), '2.conv0': (1, '<input>'),
                   '2.conv': (2, '2')}


def test_attention_blocks_bit_exact():
    torch.manual_seed(0)
    model = AttnNet().eval()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 5, 6, generator=gen) for _ in range(3)]
    run = quantize_ec(model, None, batches=batches)
    assert_same(run, quantize_ec(model, 0, batches=batches))
    got = {lay.name: lay.replay_from for lay in run[1].quantized_layers}
    assert got == {
        'stem': '<input>', 'blocks.0.attn': '<input>',
        'blocks.0.attn.out_proj': 'blocks.0',
        'blocks.0.fc1': 'blocks.0', 'blocks.0.fc2': 'blocks.0',
        'blocks.1.attn': '<input>', 'blocks.1.attn.out_proj': 'blocks.1',
        'blocks.1.fc1': 'blocks.1', 'blocks.1.fc2': 'blocks.1',
        'head': '<input>'}


def test_fast_mode_has_no_replay_fields(hard):
    cfg = QuantConfig(error_compensation=False, rows_per_layer=300,
                      max_rounds=4, act_samples=2000)
    _, report = mmquant.quantize(hard, make_batches(), cfg,
                                 logger=lambda m: None)
    assert report.replay == {}
    assert all(lay.replay_from is None for lay in report.layers)


@pytest.mark.parametrize('value', [-1, 1.5, True, '1GB'])
def test_bad_budget_is_refused(value):
    with pytest.raises(ValueError, match='replay_cache_bytes must be an '
                       r'int >= 0 \(0 disables the replay cache\) or None'):
        QuantConfig(replay_cache_bytes=value)


def test_cacheable_and_rebuild():
    t = torch.zeros(2)
    value = ([t, (1, 'a', None)], {'k': t, 'x': 2.5})
    assert cacheable(value)
    copy = rebuild(value)
    assert copy == value and copy is not value
    assert copy[0] is not value[0] and copy[1] is not value[1]
    assert copy[0][0] is t and copy[1]['k'] is t
    assert not cacheable([object()])
    assert not cacheable({1: t})  # non-string keys
    assert not cacheable([nn.ReLU()])
