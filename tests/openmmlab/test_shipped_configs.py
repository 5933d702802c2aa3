"""The shipped ImageNet/COCO configs of ``configs/bitsplit/`` fit their
quantizer's statistics budget on the full-size models.

They cannot be run here (no ImageNet/COCO), but every layer's statistics
size is known from the model alone: ``A`` is ``N x N`` float64 per group
with ``N = C_in / groups * kh * kw``. A layer over ``max_stats_bytes``
stops a user's run with an error, as the stock RetinaNet's P6 conv did
(18432 inputs, 2.7 GB) before its config raised the budget.
"""
import glob
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope
from torch import nn

from mmquant.apis.ptq import build_float_model, build_quantizer
from mmquant.core.stats import LayerGeometry, estimate_stats_bytes

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'bitsplit', '*.py')))


def _largest_layer(model: nn.Module):
    best = (0, None)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            geom = LayerGeometry(
                kind='conv', in_channels=m.in_channels,
                out_channels=m.out_channels,
                kernel_size=tuple(m.weight.shape[-2:]), stride=m.stride,
                padding=(0, 0), dilation=m.dilation, groups=m.groups)
        elif isinstance(m, nn.Linear):
            geom = LayerGeometry.from_module(m)
        else:
            continue
        best = max(best, (estimate_stats_bytes(geom), name),
                   key=lambda b: b[0])
    return best


def test_configs_found():
    names = {osp.basename(p) for p in CONFIGS}
    assert {'resnet18_w4a8_in1k.py', 'retinanet_r50_fpn_w4a8_coco.py',
            'faster-rcnn_r50_fpn_w4a8_coco.py'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_largest_layer_within_budget(path):
    cfg = Config.fromfile(path)
    budget = build_quantizer(cfg).config.max_stats_bytes
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    need, name = _largest_layer(build_float_model(cfg))
    assert budget is None or need <= budget, (
        f'{name} needs {need} bytes of statistics, budget {budget}')
    if 'retinanet' in path:
        assert name == 'neck.fpn_convs.3.conv'  # P6 on C5: N = 18432
        assert need > 2 << 30
