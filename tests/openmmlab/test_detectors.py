"""mmdet detectors through ``run_ptq`` (the path of tools/ptq.py).

Tiny RetinaNet and Faster R-CNN (``Shared2FCBBoxHead``) on a 64x64
COCO-format set: W4A8 in the error-compensated and the fast mode,
evaluated with ``CocoMetric``; bit-exact INT reload of the two-stage
detector; and ``--eval-samples`` evaluation with ``CocoMetric``.
"""
import math
import os.path as osp

import pytest
import torch
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.structures import InstanceData
from torch import nn

from mmquant.apis.calibration import preprocess_batches
from mmquant.apis.evaluation import evaluate

from .conftest import quantized_layers, tensors_of

COCO_KEYS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75',
             'coco/bbox_mAP_s', 'coco/bbox_mAP_m', 'coco/bbox_mAP_l')
ROI_LAYERS = ('roi_head.bbox_head.shared_fcs.0',
              'roi_head.bbox_head.shared_fcs.1',
              'roi_head.bbox_head.fc_cls', 'roi_head.bbox_head.fc_reg')


@pytest.mark.parametrize('kind', ['retinanet', 'faster_rcnn'])
@pytest.mark.parametrize('mode', ['error_compensated', 'fast'])
def test_w4a8_end_to_end(ws, kind, mode):
    run = ws.ptq(kind, calib_samples=8,
                 error_compensation=mode == 'error_compensated')
    rep = run.report
    assert rep['mode'] == mode
    assert osp.isfile(run.int_path)
    assert osp.isfile(osp.join(run.work_dir, 'report.json'))
    assert rep['calib_samples'] == 8

    # every Conv2d/Linear of backbone, neck and heads runs and is quantized
    layers = rep['layers']
    assert rep['summary']['float_layers'] == 0, [
        (lay['name'], lay['note']) for lay in layers if not lay['w_bits']]
    qlayers = quantized_layers(run.qmodel)
    assert sorted(lay['name'] for lay in layers) == sorted(qlayers)
    prefixes = {'retinanet': ('backbone.', 'neck.', 'bbox_head.'),
                'faster_rcnn': ('backbone.', 'neck.', 'rpn_head.',
                                'roi_head.')}[kind]
    for prefix in prefixes:
        assert any(n.startswith(prefix) for n in qlayers), prefix
    for lay in layers:
        assert lay['rows'] > 0
        assert math.isfinite(lay['objective']) and \
            math.isfinite(lay['rel_error']), lay['name']
    if kind == 'faster_rcnn':
        for name in ROI_LAYERS:
            assert name in qlayers, name
            assert isinstance(qlayers[name].layer, nn.Linear), name
        # the RoI head's rows are the float RPN's proposals
        roi = {lay['name']: lay for lay in layers}
        assert roi['roi_head.bbox_head.shared_fcs.0']['rows'] > 8
    # first_last_bits: the stem (fed by the images) and every layer whose
    # output the calibration forward returns are 8-bit, the rest 4-bit
    outputs = {'retinanet': {'bbox_head.retina_cls', 'bbox_head.retina_reg'},
               'faster_rcnn': {'rpn_head.rpn_cls', 'rpn_head.rpn_reg',
                               'roi_head.bbox_head.fc_cls',
                               'roi_head.bbox_head.fc_reg'}}[kind]
    roles = {lay['name']: lay['role'] for lay in layers if lay['role']}
    assert roles == dict({'backbone.conv1': 'input'},
                         **{name: 'output' for name in outputs})
    for lay in layers:
        bits = (8, None) if lay['role'] == 'input' else (
            (8, 8) if lay['role'] == 'output' else (4, 8))
        assert (lay['w_bits'], lay['a_bits']) == bits, lay['name']

    # CocoMetric on the float and the quantized model
    for which in ('float', 'quantized'):
        metrics = run.metrics[which]
        for key in COCO_KEYS:
            assert key in metrics, (which, key)
            assert math.isfinite(metrics[key]), (which, key)
            assert -1.0 <= metrics[key] <= 1.0


def test_int_reload_bit_exact_two_stage(ws):
    run = ws.ptq('faster_rcnn', calib_samples=8, error_compensation=True)
    init_default_scope('mmdet')
    from mmquant.models import QuantizedModel
    reloaded = QuantizedModel(architecture=run.cfg.model,
                              int_checkpoint=run.int_path).eval()
    assert sorted(quantized_layers(reloaded.architecture)) == \
        sorted(quantized_layers(run.qmodel))
    batches = preprocess_batches(
        reloaded, Runner.build_dataloader(run.cfg.test_dataloader))
    with torch.no_grad():
        for b in batches:
            # tensor mode of a two-stage detector: RPN, its proposals, RoI
            # head
            out = tensors_of(reloaded(b['inputs'], b['data_samples'],
                                      mode='tensor'))
            ref = tensors_of(run.qmodel(b['inputs'], b['data_samples'],
                                        mode='tensor'))
            assert len(out) == len(ref) > 0
            assert all(torch.equal(x, y) for x, y in zip(out, ref))
            # and the same detections
            pa = reloaded(b['inputs'], b['data_samples'], mode='predict')
            pb = run.qmodel(b['inputs'], b['data_samples'], mode='predict')
            for x, y in zip(pa, pb):
                assert torch.equal(x.pred_instances.bboxes,
                                   y.pred_instances.bboxes)
                assert torch.equal(x.pred_instances.scores,
                                   y.pred_instances.scores)


class GroundTruthDetector(nn.Module):
    """Predicts every image's ground-truth boxes with score 1."""

    def test_step(self, data):
        out = []
        for sample in data['data_samples']:
            gt = sample.gt_instances
            boxes = gt.bboxes
            boxes = getattr(boxes, 'tensor', boxes)
            sample.pred_instances = InstanceData(
                bboxes=boxes.float(), labels=gt.labels,
                scores=torch.ones(len(boxes)))
            out.append(sample)
        return out


def test_eval_samples_subset_with_coco_metric(ws):
    """``--eval-samples N`` scores the first N images against their own
    ground truth: a perfect detector gets mAP 1 on a subset too (CocoMetric
    otherwise scores against every image of its annotation file)."""
    cfg = ws.det_cfg('retinanet')
    init_default_scope('mmdet')
    full = evaluate(GroundTruthDetector(), cfg)
    subset = evaluate(GroundTruthDetector(), cfg, max_samples=2)
    assert full['coco/bbox_mAP'] == pytest.approx(1.0)
    assert subset['coco/bbox_mAP'] == pytest.approx(1.0)
