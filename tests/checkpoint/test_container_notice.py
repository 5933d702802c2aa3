"""The optional notice key of an INT checkpoint: written first, named by
its text, ignored by every reader (the format's promises hold)."""
import pytest
import torch
from torch import nn

from mmquant.checkpoint import load_container, save_container
from mmquant.checkpoint.container import NOTICE_PREFIX
from mmquant.checkpoint.int_model import (int_file_notice, load_quantized,
                                          save_quantized)
from mmquant.nn import QuantizedLayer


def test_notice_is_the_first_key_and_ignored_by_readers(tmp_path):
    path = tmp_path / 'int.pth'
    tensors = {'a': torch.arange(3)}
    save_container(path, tensors, {'k': 1}, notice='use x_quantized.py')
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ['NOTICE: use x_quantized.py', 'format',
                         'format_version', 'meta', 'tensors', 'checksums',
                         'meta_sha256']
    assert raw[NOTICE_PREFIX + 'use x_quantized.py'] is None
    loaded, meta = load_container(path)
    assert meta == {'k': 1} and list(loaded) == ['a']
    assert torch.equal(loaded['a'], tensors['a'])
    # no notice: the six keys of the format only
    save_container(path, tensors, {})
    assert list(torch.load(path, weights_only=True)) == [
        'format', 'format_version', 'meta', 'tensors', 'checksums',
        'meta_sha256']


def test_bad_notice_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match='notice must be a str, got int'):
        save_container(tmp_path / 'int.pth', {}, {}, notice=3)
    assert list(tmp_path.iterdir()) == []


def test_save_quantized_passes_the_notice(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    layer = model[0]
    q = torch.tensor([[1, -1, 0, 1], [0, 1, 1, -1], [-1, 0, 1, 0]],
                     dtype=torch.int8)
    model[0] = QuantizedLayer(layer, q, torch.full((3, ), 0.5), 2, 8, 0.1,
                              True)
    path = tmp_path / 'm_int.pth'
    save_quantized(model, path, notice='hello')
    assert next(iter(torch.load(path, weights_only=True))) == \
        'NOTICE: hello'
    # by default the notice names the config tools/ptq.py writes
    save_quantized(model, path)
    first = next(iter(torch.load(path, weights_only=True)))
    assert first == NOTICE_PREFIX + int_file_notice(path)
    assert first.endswith('RANDOMLY INITIALISED model. Evaluate it with an '
                          'mmquant.QuantizedModel config such as '
                          'm_quantized.py which tools/ptq.py writes next '
                          'to it: tools/test.py m_quantized.py m_int.pth')
    assert int_file_notice('dir/other.pth').endswith(
        'Evaluate it with an mmquant.QuantizedModel config')
    save_quantized(model, path, notice='')
    assert next(iter(torch.load(path, weights_only=True))) == 'format'
    fresh = nn.Sequential(nn.Linear(4, 3))
    load_quantized(fresh, path)
    assert torch.equal(fresh[0].qweight, q)
