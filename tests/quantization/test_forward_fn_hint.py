"""A plain ``(input, label)`` DataLoader given to ``mmquant.quantize``
without ``forward_fn`` fails with a hint naming the ``forward_fn`` to
pass; with that ``forward_fn`` the same loader quantizes."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mmquant
from mmquant.quantization import default_forward


def _model_and_loader():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2)).eval()
    data = TensorDataset(torch.randn(8, 3, 8, 8), torch.arange(8) % 2)
    return model, DataLoader(data, batch_size=4)


def test_input_label_batches_name_forward_fn():
    model, loader = _model_and_loader()
    config = dict(w_bits=4, a_bits=8, max_rounds=2)
    with pytest.raises(TypeError) as info:
        mmquant.quantize(model, loader, config)
    msg = str(info.value)
    assert 'forward_fn=lambda m, b: m(b[0])' in msg, msg
    assert 'the 2 elements of a list calibration batch' in msg, msg
    cause = info.value.__cause__
    assert type(cause) is TypeError
    assert str(cause) in msg
    assert 'positional argument' in str(cause)
    # the hinted forward_fn works on the same loader
    qmodel, report = mmquant.quantize(model, loader, config,
                                      forward_fn=lambda m, b: m(b[0]))
    assert len(report.quantized_layers) == 2


def test_other_batches_unchanged():
    model, _ = _model_and_loader()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    assert torch.equal(default_forward(model, x), expected)
    assert torch.equal(default_forward(model, (x, )), expected)
    assert torch.equal(default_forward(model, {'input': x}), expected)
    with pytest.raises(TypeError, match='pass forward_fn='):
        default_forward(model, 3)
