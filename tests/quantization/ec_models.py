"""Models and helpers of the error-compensated tests (replays and the one
pass): what can break a replay or the one pass is a block used twice, a
conv that pads inside its forward, a block that changes its input in
place, list/keyword inputs and dict outputs, a module called through
``.forward`` (no hooks), and blocks whose forward depends on state their
parent sets before each call."""
import threading
from typing import Any, Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

import mmquant
from mmquant import QuantConfig
from mmquant.checkpoint import save_quantized

from .models import SamePadConv, smooth_images


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


class Tripwire(nn.Module):
    """The identity, except in the thread of the one pass's batch
    ``batch``, where it raises."""

    def __init__(self, batch: int = -1) -> None:
        super().__init__()
        self.batch = batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = threading.current_thread().name
        if name == f'mmquant-one-pass-{self.batch}':
            raise RuntimeError('tripwire')
        return x


class HardNet(nn.Module):
    """Everything that can break a replay (module docstring).

    Args:
        ch (int): Channels. Defaults to 8.
        shared (bool): Include a block called twice (before and after
            another). Without it every layer runs once per pass. Defaults
            to True.
        trip (int): The one pass's batch whose pass raises after the stage
            (:class:`Tripwire`); -1: none. Defaults to -1.
    """

    def __init__(self, ch: int = 8, shared: bool = True,
                 trip: int = -1) -> None:
        super().__init__()
        self.stem = Block(3, ch)
        if shared:
            self.shared = Block(ch, ch)  # called before and after `mid`
            self.mid = Block(ch, ch)
        self.stage = nn.Sequential(
            Block(ch, ch), Block(ch, ch, same_pad=True),
            Block(ch, ch, inplace_input=True), Block(ch, ch))
        self.trip = Tripwire(trip)
        self.neck = ListNeck(ch)
        self.direct = Block(ch, ch)  # called through .forward
        self.gated = Gated(ch)
        self.fragile = Fragile(ch)
        self.head = nn.Linear(2 * ch, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if hasattr(self, 'shared'):
            x = self.shared(self.mid(self.shared(x)))
        x = self.trip(self.stage(x))
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


def make_batches(n: int = 3, bs: int = 4, size: int = 16) -> list:
    """``n`` batches of ``bs`` smooth images."""
    return list(smooth_images(n * bs, size).split(bs))


def quantize_ec(model: nn.Module, budget: Optional[int], a_bits=8,
                logs: Optional[List[str]] = None,
                batches: Optional[list] = None, one_pass: bool = False,
                forward_fn: Optional[Callable] = None) -> Any:
    """Error-compensated W4 with the replay cache ``budget``; the one pass
    only if asked (these tests are about the replays by default)."""
    cfg = QuantConfig(w_bits=4, a_bits=a_bits, rows_per_layer=300,
                      max_rounds=8, act_samples=2000,
                      replay_cache_bytes=budget, one_pass=one_pass)
    return mmquant.quantize(model, batches or make_batches(), cfg,
                            forward_fn=forward_fn,
                            logger=(logs.append if logs is not None
                                    else lambda msg: None))


def int_bytes(model: nn.Module, path) -> bytes:
    """The bytes of the model's INT checkpoint."""
    save_quantized(model, str(path), {'test': 'replay'})
    with open(path, 'rb') as f:
        return f.read()


def assert_same(run, ref) -> None:
    """Two ``quantize`` results hold the same tensors and solutions."""
    (qmodel, report), (ref_model, ref_report) = run, ref
    sd, ref_sd = qmodel.state_dict(), ref_model.state_dict()
    assert list(sd) == list(ref_sd)
    for key in sd:
        assert torch.equal(sd[key], ref_sd[key]), key
    for lay, ref_lay in zip(report.layers, ref_report.layers):
        assert (lay.objective, lay.act_scale, lay.rows) == (
            ref_lay.objective, ref_lay.act_scale, ref_lay.rows), lay.name
