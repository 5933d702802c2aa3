"""mmdet's DETR (nn.MultiheadAttention inside mmcv's wrapper) and Mask
R-CNN (ConvTranspose2d mask upsampling), random weights, 64x64 images:
which layers are quantized, which stay float and why, and the INT reload
through ``QuantizedModel``."""
import copy
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

import mmquant
from mmquant import QuantConfig

mmdet = pytest.importorskip('mmdet')
CONFIGS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')


def build(rel):
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(CONFIGS, rel))
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    return cfg, MODELS.build(copy.deepcopy(cfg.model)).eval()


def batches(n=2):
    from mmdet.structures import DetDataSample
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        meta = dict(img_shape=(64, 64), batch_input_shape=(64, 64),
                    pad_shape=(64, 64), ori_shape=(64, 64),
                    scale_factor=(1., 1.))
        sample = DetDataSample(metainfo=meta)
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[4., 4., 40., 40.]]),
            labels=torch.tensor([1]))
        out.append(dict(inputs=torch.randn(1, 3, 64, 64, generator=g),
                        data_samples=[sample]))
    return out


def tensor_forward(model, batch):
    return model(batch['inputs'], batch['data_samples'], mode='tensor')


@pytest.mark.skipif(not glob.glob(osp.join(CONFIGS, 'detr')),
                    reason='mmdet configs not installed')
def test_detr_attention_quantized(tmp_path):
    cfg, model = build('detr/detr_r18_8xb2-500e_coco.py')
    data = batches()
    qmodel, report = mmquant.quantize(model, data, QuantConfig(
        method='rtn'), forward_fn=tensor_forward, logger=lambda msg: None)
    layers = {lay.name: lay for lay in report.layers}
    attn = [n for n, lay in layers.items() if lay.type ==
            'MultiheadAttention']
    out_proj = [n for n in layers if n.endswith('.attn.out_proj')]
    # 6 encoder self-attentions, 6 decoder self- and 6 cross-attentions
    assert len(attn) == len(out_proj) == 18
    for name in attn + out_proj:
        assert layers[name].w_bits == 4, name
    assert {n: lay.role for n, lay in layers.items() if lay.role} == {
        'backbone.conv1': 'input', 'bbox_head.fc_cls': 'output',
        'bbox_head.fc_reg': 'output'}
    floats = {n: lay.note for n, lay in layers.items() if lay.w_bits is None}
    assert floats == {'query_embedding': (
        'Embedding: a lookup table, not a matmul (never called itself; its '
        'weights are used by unsqueeze): left float')}
    # the INT checkpoint rebuilds the attention layers bit-exactly
    from mmquant.models import QuantizedModel
    path = str(tmp_path / 'detr.pth')
    mmquant.save(qmodel, path)
    torch.manual_seed(1)
    reloaded = QuantizedModel(architecture=cfg.model,
                              int_checkpoint=path).eval()
    with torch.no_grad():
        a = tensor_forward(reloaded.architecture, data[0])
        b = tensor_forward(qmodel, data[0])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.skipif(not glob.glob(osp.join(CONFIGS, 'mask_rcnn')),
                    reason='mmdet configs not installed')
def test_mask_rcnn_upsample_quantized():
    _, model = build('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    _, report = mmquant.quantize(model, batches(1), QuantConfig(
        method='rtn'), forward_fn=tensor_forward, logger=lambda msg: None)
    layers = {lay.name: lay for lay in report.layers}
    assert report.to_dict()['summary']['float_layers'] == 0
    up = layers['roi_head.mask_head.upsample']
    assert (up.type, up.w_bits) == ('ConvTranspose2d', 4)
    # tensor mode returns the RoI head's outputs (not the RPN's)
    assert {n for n, lay in layers.items() if lay.role == 'output'} == {
        'roi_head.bbox_head.fc_cls', 'roi_head.bbox_head.fc_reg',
        'roi_head.mask_head.conv_logits'}
