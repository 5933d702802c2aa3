"""Error-compensated mode's one pass (:mod:`mmquant.quantization.one_pass`).

The one pass must never change a result: every model here is quantized
with it (the default) and with the full replay from the network input
(``replay_cache_bytes=0``), and the quantized models must be equal bit
for bit, the INT checkpoints byte for byte.  Around that: where the one
pass stops and why (a layer that runs twice, an attention, the memory
budget, a batch that raises or ends early), that the layers after it
replay from the module inputs it recorded, and that no thread outlives a
run, also one that fails.
"""
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmquant import QuantConfig
from mmquant.quantization import engine
from mmquant.quantization.capture import LayerCapture, op_input_call

from .ec_models import (AttnNet, Block, HardNet, Twice, assert_same,
                        int_bytes, quantize_ec)
from .models import DeepNet, SamePadConv, TinyNet, init_model


def _one_pass_threads() -> list:
    return [t for t in threading.enumerate()
            if t.name.startswith('mmquant-one-pass-')]


def _froms(report) -> dict:
    return {lay.name: lay.replay_from for lay in report.quantized_layers}


@pytest.fixture(scope='module')
def once():
    return init_model(HardNet(shared=False))


@pytest.fixture(scope='module')
def once_full(once):
    return quantize_ec(once, 0)


@pytest.mark.parametrize('a_bits', [8, None])
def test_every_layer_in_one_pass_is_bit_exact(once, once_full, a_bits,
                                              tmp_path):
    full = once_full if a_bits == 8 else quantize_ec(once, 0, a_bits)
    logs = []
    run = quantize_ec(once, None, a_bits, logs, one_pass=True)
    assert_same(run, full)
    assert int_bytes(run[0], tmp_path / 'a.pth') == int_bytes(
        full[0], tmp_path / 'b.pth')
    info = run[1].replay
    n = len(run[1].quantized_layers)
    assert n == 14
    assert (info['one_pass'], info['one_pass_planned']) == (n, n)
    assert info['one_pass_note'] == ''
    assert set(_froms(run[1]).values()) == {'<one pass>'}
    assert info['from_module'] == info['from_input'] == 0
    # about one forward pass of work: no layer ran from the input again,
    # so the replay cache held nothing after the float pass
    assert info['one_pass_estimated_bytes'] > 0
    assert any(m.startswith(f'mmquant: one pass over the batches for the '
                            f'first {n} of {n} layers') for m in logs)
    lines = [m for m in logs if m.startswith('mmquant: [')]
    assert len(lines) == n
    assert all(', inputs from the one pass, ' in m for m in lines)
    assert lines[-1].endswith('ETA 0.0s')
    assert _one_pass_threads() == []


def test_a_layer_run_twice_ends_the_one_pass(tmp_path):
    # HardNet's second layer is a block called twice: from there on,
    # replays (the module inputs recorded by the one pass included)
    model = init_model(HardNet())
    run = quantize_ec(model, None, one_pass=True)
    full = quantize_ec(model, 0)
    assert_same(run, full)
    info = run[1].replay
    assert info['one_pass'] == 1
    assert info['one_pass_note'] == "'shared.conv' runs 2 times per pass"
    froms = _froms(run[1])
    assert froms['stem.conv'] == '<one pass>'
    assert froms['shared.conv'] == '<input>'
    assert info['from_module'] >= 4


def test_handoff_records_the_inputs_replays_start_from():
    # 0.conv, 1.conv, 2.conv0 in the one pass; 2.conv runs twice and
    # replays from the input of its block '2', recorded by the one pass
    # on its way; the next block's input is valid only once 2.conv is
    # quantized, so its layer runs from the network input (block '2'
    # returning its cached output), as a replay-only run does
    model = init_model(nn.Sequential(Block(3, 8), Block(8, 8), Twice(8),
                                     Block(8, 8)))
    run = quantize_ec(model, None, one_pass=True)
    assert_same(run, quantize_ec(model, 0))
    assert _froms(run[1]) == {
        '0.conv': '<one pass>', '1.conv': '<one pass>',
        '2.conv0': '<one pass>', '2.conv': '2', '3.conv': '<input>'}


@pytest.mark.parametrize('make,count,note', [
    (AttnNet, 1, "'blocks.0.attn' is an attention projection"),
    (TinyNet, 3, "'same' runs 2 times per pass"),
    (DeepNet, 8, ''),
])
def test_other_models_bit_exact(make, count, note):
    torch.manual_seed(0)
    if make is AttnNet:
        model = make().eval()
        gen = torch.Generator().manual_seed(0)
        batches = [torch.randn(4, 5, 6, generator=gen) for _ in range(3)]
    else:
        model, batches = init_model(make()), None
    run = quantize_ec(model, None, batches=batches, one_pass=True)
    assert_same(run, quantize_ec(model, 0, batches=batches))
    info = run[1].replay
    assert (info['one_pass'], info['one_pass_note']) == (count, note)


def test_memory_budget_shortens_the_one_pass(once, once_full):
    held = quantize_ec(once, None, one_pass=True)[1].replay[
        'one_pass_estimated_bytes']
    logs = []
    run = quantize_ec(once, held - 1, logs=logs, one_pass=True)
    assert_same(run, once_full)
    info = run[1].replay
    assert 0 < info['one_pass'] < 14
    first = run[1].quantized_layers[info['one_pass']].name
    assert info['one_pass_note'].startswith(
        'the stopped passes would hold about ')
    assert info['one_pass_note'].endswith(
        f"at {first!r} (estimated), over replay_cache_bytes="
        f"{(held - 1) / 2**20:.1f} MiB")
    assert any('then replays: the stopped passes would hold' in m
               for m in logs)


def test_off_switches():
    model = init_model(DeepNet())
    logs = []
    run = quantize_ec(model, None, logs=logs)  # one_pass=False
    assert run[1].replay['one_pass'] == 0
    assert run[1].replay['one_pass_note'] == 'one_pass=False'
    assert not any('one pass' in m for m in logs)
    run = quantize_ec(model, 0, one_pass=True)
    assert run[1].replay['one_pass'] == 0
    assert run[1].replay['one_pass_note'].startswith(
        'replay_cache_bytes=0')
    with pytest.raises(TypeError, match="one_pass must be True or False, "
                       "got 'yes'"):
        QuantConfig(one_pass='yes')


def test_a_batch_that_raises_ends_the_one_pass(once_full):
    # batch 2's pass raises after the stage: the layers before it are
    # calibrated in the one pass, the rest replayed, same result
    model = init_model(HardNet(shared=False, trip=2))
    logs = []
    run = quantize_ec(model, None, logs=logs, one_pass=True)
    assert_same(run, once_full)
    info = run[1].replay
    froms = list(_froms(run[1]).items())
    assert info['one_pass'] == 5  # stem and the stage's four convs
    assert info['one_pass_planned'] == 14
    assert froms[4] == ('stage.3.conv', '<one pass>')
    assert froms[5][1] != '<one pass>'
    note = ("the one pass ended at 'neck.lateral.0.conv': batch 2 raised "
            'RuntimeError: tripwire')
    assert info['one_pass_note'] == note
    assert f'mmquant: {note}; replaying from here' in logs
    assert _one_pass_threads() == []


def test_a_batch_that_ends_early_ends_the_one_pass(once_full):
    # batch 1's pass does not run the model: it ends before layer 0
    def forward(model, batch):
        if threading.current_thread().name == 'mmquant-one-pass-1':
            return None
        return model(batch)

    run = quantize_ec(init_model(HardNet(shared=False)), None, one_pass=True,
                      forward_fn=forward)
    assert_same(run, once_full)
    assert run[1].replay['one_pass'] == 0
    assert run[1].replay['one_pass_note'] == (
        "the one pass ended at 'stem.conv': batch 1 ended first")
    assert _one_pass_threads() == []


def test_no_thread_outlives_a_failed_run(once, monkeypatch):
    solve = engine.Calibration.solve_and_swap
    calls = []

    def failing(self, layer, act=None):
        calls.append(layer.name)
        if len(calls) == 3:
            raise RuntimeError('solver failed')
        return solve(self, layer, act)

    monkeypatch.setattr(engine.Calibration, 'solve_and_swap', failing)
    before = {k: v.clone() for k, v in once.state_dict().items()}
    with pytest.raises(RuntimeError, match='solver failed'):
        quantize_ec(once, None, one_pass=True)
    assert _one_pass_threads() == []
    # the float model given is left as it was
    after = once.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize('module,shape', [
    (nn.Conv2d(4, 6, 3, padding=1, stride=2), (2, 4, 9, 9)),
    (SamePadConv(4, 6, 3), (2, 4, 9, 9)),
    (nn.Conv2d(4, 6, 3, padding='same', dilation=2), (2, 4, 9, 9)),
    (nn.Conv1d(4, 6, 3, padding=1), (2, 4, 9)),
    (nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1), (2, 4, 5, 5)),
    (nn.Linear(4, 6), (2, 3, 4)),
])
def test_op_input_call_matches_the_capture(module, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    seen = []
    with LayerCapture(module, seen.append):
        module(x)
    call = op_input_call(module, (x, ), {})
    ref, = seen
    assert call.output is None
    assert call.module_input is x
    assert torch.equal(call.op_input, ref.op_input)
    assert (call.stride, call.padding, call.dilation, call.groups) == (
        ref.stride, ref.padding, ref.dilation, ref.groups)


def test_op_input_call_without_the_op():
    class Standardized(nn.Conv2d):
        def forward(self, x):
            w = self.weight - self.weight.mean()
            return F.conv2d(x, w, self.bias)

    conv = Standardized(3, 4, 1)
    assert op_input_call(conv, (torch.zeros(1, 3, 2, 2), ), {}) is None
