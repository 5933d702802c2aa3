"""first_last_bits: input layers (fed by the network input) and output
layers (their outputs reach the returned tensors)."""
import pytest
import torch
from torch import nn

import mmquant
from mmquant import QuantConfig

from .models import init_model, smooth_images


class TwoHeads(nn.Module):
    """Two stems on the input, a conv head and a Linear head behind a
    sigmoid, returned in a dict with a list; an unreturned aux conv."""

    def __init__(self):
        super().__init__()
        self.stem_a = nn.Conv2d(3, 8, 3, padding=1)
        self.stem_b = nn.Conv2d(3, 8, 1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.aux = nn.Conv2d(8, 4, 1)
        self.cls = nn.Conv2d(8, 5, 1)
        self.reg = nn.Linear(8, 4)

    def forward(self, x):
        x = (x - 0.5) / 2  # preprocessing does not hide the input
        y = torch.relu(self.stem_a(x) + self.stem_b(x))
        y = torch.relu(self.body(y))
        self.aux(y)  # computed, not returned
        cls = self.cls(y)
        reg = self.reg(y.mean((2, 3))).sigmoid()
        return dict(scores=[cls.permute(0, 2, 3, 1)], boxes=(reg, ))


def data():
    return list(smooth_images(16, 8).split(8))


def roles(report):
    return {lay.name: (lay.role, lay.w_bits, lay.a_bits)
            for lay in report.layers}


def test_input_and_output_layers_get_first_last_bits():
    model = init_model(TwoHeads())
    _, report = mmquant.quantize(
        model, data(), QuantConfig(error_compensation=False),
        logger=lambda msg: None)
    assert roles(report) == {
        'stem_a': ('input', 8, None),
        'stem_b': ('input', 8, None),
        'body': (None, 4, 8),
        'aux': (None, 4, 8),
        'cls': ('output', 8, 8),
        'reg': ('output', 8, 8),
    }


def test_first_last_bits_none_and_overrides():
    model = init_model(TwoHeads())
    cfg = QuantConfig(first_last_bits=None, error_compensation=False,
                      overrides={'cls': dict(w_bits=6)})
    _, report = mmquant.quantize(model, data(), cfg,
                                 logger=lambda msg: None)
    got = roles(report)
    # roles are still reported; the input stays float
    assert got['stem_a'] == ('input', 4, None)
    assert got['reg'] == ('output', 4, 8)
    assert got['cls'] == ('output', 6, 8)


def opaque(x):
    """A copy torch functions do not see (like a C++ extension's)."""
    return torch.from_numpy(x.numpy().copy())


class Hidden(nn.Module):

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return opaque(self.b(self.a(opaque(x))))


def test_fallback_to_first_and_last_executed():
    _, report = mmquant.quantize(
        init_model(Hidden()), data(), QuantConfig(error_compensation=False),
        logger=lambda msg: None)
    assert roles(report) == {'a': ('input', 8, None),
                             'b': ('output', 8, 8)}


@pytest.mark.parametrize('inputs, outputs', [('a', 'b'), (['a'], ['b'])])
def test_resolve_accepts_names(inputs, outputs):
    specs = QuantConfig().resolve(['a', 'm', 'b'], inputs, outputs)
    assert [(s.w_bits, s.a_bits) for s in specs.values()] == [
        (8, None), (4, 8), (8, 8)]
