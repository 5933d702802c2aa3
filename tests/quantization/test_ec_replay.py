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
import torch.nn.functional as F
from torch import nn

import mmquant
from mmquant import QuantConfig
from mmquant.checkpoint import save_quantized
from mmquant.quantization.replay import cacheable, rebuild

from .models import DeepNet, SamePadConv, TinyNet, init_model, smooth_images


class Block(nn.Module):
    """conv-bn-relu; ``inplace_input`` first scales and shifts its input
    in place (the caller's tensor changes)."""

    def __init__(self, cin: int, cout: int, inplace_input: bool = False,
                 same_pad: bool = False) -> None:
        super().__init__()
        conv = SamePadConv if same_pad else nn.Conv2d
        self.conv = conv(cin, cout, 3, padding=0 if same_pad else 1)
        self.bn = nn.BatchNorm2d(cout)
        self.inplace_input = inplace_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace_input:
            x = x.mul_(0.5).add_(0.25)
        return F.relu(self.bn(self.conv(x)))


class ListNeck(nn.Module):
    """Takes a list and a keyword argument, returns a dict."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList([Block(ch, ch), Block(ch, ch)])
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, feats: list, scale: float = 1.0) -> dict:
        feats.append(feats[0] * scale)  # edits the list it is given
        a = self.lateral[0](feats[0])
        b = self.lateral[1](feats[1] + feats[2])
        return {'a': a, 'b': self.out(b)}


class Gated(nn.Module):
    """Runs its convs only while the budget its parent sets before each
    call lasts: its output depends on state outside its inputs."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.budget = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.budget > 0:
            x = F.relu(self.conv1(x))
            self.budget -= 1
            x = self.conv2(x)
        return x


class Fragile(nn.Module):
    """Needs an attribute its parent sets before each call: raises when
    run alone."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 1)
        self.conv2 = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.__dict__.pop('scale')
        return self.conv2(F.relu(self.conv1(x * scale)))


class HardNet(nn.Module):

    def __init__(self, ch: int = 8) -> None:
        super().__init__()
        self.stem = Block(3, ch)
        self.shared = Block(ch, ch)  # called before and after `mid`
        self.mid = Block(ch, ch)
        self.stage = nn.Sequential(
            Block(ch, ch), Block(ch, ch, same_pad=True),
            Block(ch, ch, inplace_input=True), Block(ch, ch))
        self.neck = ListNeck(ch)
        self.direct = Block(ch, ch)  # called through .forward
        self.gated = Gated(ch)
        self.fragile = Fragile(ch)
        self.head = nn.Linear(2 * ch, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.shared(self.mid(self.shared(x)))
        x = self.stage(x)
        out = self.neck([x, x.flip(-1)], scale=0.5)
        a = self.direct.forward(out['a'])
        self.gated.budget = 1
        b = self.gated(out['b'])
        self.fragile.scale = 0.5
        b = self.fragile(b)
        return self.head(torch.cat([a.mean((2, 3)), b.mean((2, 3))], 1))


class Twice(nn.Module):
    """A 1x1 conv, then a conv that pads inside its forward, run twice."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(ch, ch, 1)
        self.conv = SamePadConv(ch, ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv0(x))
        return self.conv(F.relu(self.conv(x)))


class AttnBlock(nn.Module):
    """Self-attention and an MLP, called with a keyword argument."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + scale * self.fc2(F.relu(self.fc1(x)))


class AttnNet(nn.Module):

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 16)
        self.blocks = nn.ModuleList([AttnBlock(), AttnBlock()])
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x)
        for block in self.blocks:
            t = block(t, scale=0.5)
        return self.head(t.mean(1))


def _batches(n: int = 3, bs: int = 4, size: int = 16) -> list:
    return list(smooth_images(n * bs, size).split(bs))


def _quantize(model, budget, a_bits=8, logs=None, batches=None):
    cfg = QuantConfig(w_bits=4, a_bits=a_bits, rows_per_layer=300,
                      max_rounds=8, act_samples=2000,
                      replay_cache_bytes=budget)
    return mmquant.quantize(model, batches or _batches(), cfg,
                            logger=(logs.append if logs is not None
                                    else lambda msg: None))


def _int_bytes(model, path) -> bytes:
    save_quantized(model, str(path), {'test': 'replay'})
    with open(path, 'rb') as f:
        return f.read()


def _assert_same(run, ref):
    (qmodel, report), (ref_model, ref_report) = run, ref
    sd, ref_sd = qmodel.state_dict(), ref_model.state_dict()
    assert list(sd) == list(ref_sd)
    for key in sd:
        assert torch.equal(sd[key], ref_sd[key]), key
    for lay, ref_lay in zip(report.layers, ref_report.layers):
        assert (lay.objective, lay.act_scale, lay.rows) == (
            ref_lay.objective, ref_lay.act_scale, ref_lay.rows), lay.name


@pytest.fixture(scope='module')
def hard():
    return init_model(HardNet())


@pytest.fixture(scope='module')
def hard_full(hard):
    return _quantize(hard, 0)


@pytest.mark.parametrize('a_bits', [8, None])
def test_hard_model_bit_exact(hard, hard_full, a_bits, tmp_path):
    full = hard_full if a_bits == 8 else _quantize(hard, 0, a_bits)
    logs = []
    run = _quantize(hard, None, a_bits, logs)
    _assert_same(run, full)
    assert _int_bytes(run[0], tmp_path / 'a.pth') == _int_bytes(
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
    assert re.search(r"\[5/\d+\] stage\.1\.conv: .* replayed from "
                     r"'stage', [\d.]+s elapsed, ETA [\d.]+s$", lines[4])
    assert lines[-1].endswith('ETA 0.0s')


@pytest.mark.parametrize('budget', [1, 20000, 60000])
def test_tight_budget_is_exact_and_says_so(hard, hard_full, budget):
    logs = []
    run = _quantize(hard, budget, logs=logs)
    _assert_same(run, hard_full)
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
    run = _quantize(model, None)
    _assert_same(run, _quantize(model, 0))
    assert run[1].replay['from_module'] == 0


def test_sequential_of_layers_starts_at_suffixes():
    # conv, relu, conv, relu ...: conv j + 1 starts at the suffix from the
    # relu after conv j - 1 (the last input cached by an earlier pass)
    model = init_model(DeepNet())
    run = _quantize(model, None)
    _assert_same(run, _quantize(model, 0))
    got = [lay.replay_from for lay in run[1].quantized_layers]
    assert got == ['features', 'features', 'features[1:]', 'features[3:]',
                   'features[5:]', 'features[7:]', 'features[9:]',
                   '<input>']


def test_layer_used_twice_inside_a_boundary():
    model = init_model(nn.Sequential(Block(3, 8), Twice(8), Twice(8)))
    run = _quantize(model, None)
    _assert_same(run, _quantize(model, 0))
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
    run = _quantize(model, None, batches=batches)
    _assert_same(run, _quantize(model, 0, batches=batches))
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
    _, report = mmquant.quantize(hard, _batches(), cfg,
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
