"""The OpenMMLab stack mmquant is tested with imports and its ops run."""
import pytest
import torch


def test_versions_are_the_tested_ones():
    import mmcv
    import mmdet
    import mmengine
    import mmpretrain
    import torchvision

    assert torch.__version__.split('+')[0] == '2.9.1'
    assert torchvision.__version__.split('+')[0] == '0.24.1'
    assert mmengine.__version__ == '0.10.7'
    assert mmcv.__version__ == '2.1.0'
    assert mmpretrain.__version__ == '1.2.0'
    assert mmdet.__version__ == '3.3.0'


def test_mmcv_compiled_ops_run():
    from mmcv.ops import nms, roi_align

    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.],
                          [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert dets.shape == (2, 5)

    feat = torch.arange(16.).view(1, 1, 4, 4)
    rois = torch.tensor([[0., 0., 0., 3., 3.]])
    out = roi_align(feat, rois, (1, 1), 1.0, 0, 'avg', True)
    # aligned=True shifts the box by -0.5 px to (-0.5, 2.5); adaptive
    # sampling takes 3x3 points at pixel centres 0, 1, 2: the mean of
    # feat[0:3, 0:3] is 5.
    assert out.item() == pytest.approx(5.0)


def test_mmquant_version():
    import mmquant

    assert isinstance(mmquant.__version__, str)
    assert mmquant.version_info[:2] == tuple(
        int(p) for p in mmquant.__version__.split('.')[:2])
