"""Tiny on-disk datasets, tiny model configs and float checkpoints for the
OpenMMLab end-to-end tests.

Everything is small enough for 2 shared CPU cores:

* an ImageNet-style folder dataset (``<root>/{train,val}/<class>/*.png``)
  of 32x32 images for mmpretrain's ``CustomDataset``; each class has its
  own colour and stripe orientation plus noise, so a classifier can learn
  it in a few steps;
* a COCO-format detection set of 64x64 images with 1-3 filled coloured
  rectangles each, their exact boxes and a COCO json, for mmdet's
  ``CocoDataset``/``CocoMetric``;
* config dicts of tiny classifiers (ResNet-18 layout with 8 channels,
  MobileNetV2 x0.25) and detectors (RetinaNet, Faster R-CNN with a
  ``Shared2FCBBoxHead``) with their data pipelines, dataloaders and
  evaluators, as :class:`mmengine.config.Config` objects;
* float checkpoints of those models (classifiers trained for a few steps,
  detectors with random weights and BatchNorm statistics of the data);
* the package-scoped ``ws`` fixture (:class:`Workspace`), which makes each
  of these, and each ``run_ptq`` run the tests share, once and lazily.

Torch runs with one thread in these tests (see ``_one_thread``).
"""
import contextlib
import copy
import json
import os
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import set_random_seed
from PIL import Image


CLASSES = ('red', 'green', 'blue')
#: (R, G, B) base colour and stripe orientation of every class.
_CLASS_STYLE = {0: ((200, 60, 60), 'h'), 1: ((60, 200, 60), 'v'),
                2: ((60, 60, 200), 'd')}
DET_CLASSES = ('square', 'wide', 'tall')
_DET_COLOURS = {0: (230, 40, 40), 1: (40, 230, 40), 2: (40, 40, 230)}


# ------------------------------------------------------------------- data --
def _cls_image(label: int, rng: np.random.Generator, size: int = 32
               ) -> np.ndarray:
    colour, orient = _CLASS_STYLE[label]
    yy, xx = np.mgrid[0:size, 0:size]
    period = rng.integers(4, 8)
    phase = rng.integers(0, period)
    coord = {'h': yy, 'v': xx, 'd': xx + yy}[orient]
    stripes = ((coord + phase) // (period // 2)) % 2
    img = np.empty((size, size, 3), np.float32)
    for c in range(3):
        img[..., c] = colour[c] * (0.55 + 0.45 * stripes)
    img += rng.normal(0, 18, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_imagenet_folder(root: str, per_class: Dict[str, int],
                         seed: int = 0, size: int = 32) -> str:
    """Write ``<root>/<split>/<class>/<i>.png`` images.

    Args:
        root (str): Output folder.
        per_class (dict): ``{split: images per class}``.
        seed (int): Seed of the images.
        size (int): Side of the square images.

    Returns:
        str: ``root``.
    """
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = osp.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                Image.fromarray(_cls_image(label, rng, size)).save(
                    osp.join(folder, f'{i:03d}.png'))
    return root


def make_coco(root: str, splits: Dict[str, int], seed: int = 0,
              size: int = 64) -> str:
    """Write a tiny COCO-format detection set.

    ``<root>/<split>/<i>.png`` images, each with 1-3 filled rectangles of
    three shapes/colours on a noisy background, and
    ``<root>/annotations/<split>.json`` with their exact boxes.

    Args:
        root (str): Output folder.
        splits (dict): ``{split: number of images}``.
        seed (int): Seed.
        size (int): Image side.

    Returns:
        str: ``root``.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    ann_id = 1
    for split, count in splits.items():
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, anns = [], []
        for i in range(count):
            img = rng.normal(110, 20, (size, size, 3))
            for _ in range(int(rng.integers(1, 4))):
                label = int(rng.integers(0, 3))
                base = int(rng.integers(12, 22))
                w, h = {0: (base, base), 1: (base + 10, base - 4),
                        2: (base - 4, base + 10)}[label]
                x0 = int(rng.integers(0, size - w))
                y0 = int(rng.integers(0, size - h))
                img[y0:y0 + h, x0:x0 + w] = _DET_COLOURS[label]
                anns.append(dict(
                    id=ann_id, image_id=i + 1, category_id=label + 1,
                    bbox=[x0, y0, w, h], area=float(w * h), iscrowd=0))
                ann_id += 1
            name = f'{i:03d}.png'
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                osp.join(root, split, name))
            images.append(dict(id=i + 1, file_name=name, width=size,
                               height=size))
        coco = dict(
            images=images, annotations=anns,
            categories=[dict(id=k + 1, name=n, supercategory='shape')
                        for k, n in enumerate(DET_CLASSES)])
        with open(osp.join(root, 'annotations', f'{split}.json'), 'w') as f:
            json.dump(coco, f)
    return root


# ---------------------------------------------------------------- configs --
def _runtime(scope: str) -> Dict[str, Any]:
    return dict(
        default_scope=scope,
        default_hooks=dict(
            timer=dict(type='IterTimerHook'),
            logger=dict(type='LoggerHook', interval=50),
            param_scheduler=dict(type='ParamSchedulerHook'),
            checkpoint=dict(type='CheckpointHook', interval=1),
            sampler_seed=dict(type='DistSamplerSeedHook')),
        env_cfg=dict(cudnn_benchmark=False,
                     mp_cfg=dict(mp_start_method='fork',
                                 opencv_num_threads=0),
                     dist_cfg=dict(backend='gloo')),
        log_level='WARNING',
        load_from=None,
        resume=False,
        # a real config trains too (and mmengine's Runner wants all three
        # of train_dataloader/train_cfg/optim_wrapper or none)
        train_cfg=dict(by_epoch=True, max_epochs=1, val_interval=1),
        val_cfg=dict(type='ValLoop'),
        test_cfg=dict(type='TestLoop'),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01,
                                          momentum=0.9)))


def cls_model(kind: str) -> Dict[str, Any]:
    """A tiny mmpretrain ``ImageClassifier`` config for 32x32 images.

    Args:
        kind (str): ``'resnet'`` (ResNet-18 layout, 8 base channels, 21
            layers) or ``'mobilenet'`` (MobileNetV2, ``widen_factor=0.25``,
            53 layers of which 17 depthwise).
    """
    if kind == 'resnet':
        backbone = dict(type='ResNet', depth=18, base_channels=8,
                        stem_channels=8, out_indices=(3, ))
        channels = 64
    elif kind == 'mobilenet':
        backbone = dict(type='MobileNetV2', widen_factor=0.25)
        channels = 1280
    else:
        raise ValueError(kind)
    return dict(
        type='ImageClassifier',
        data_preprocessor=dict(
            type='ClsDataPreprocessor', num_classes=len(CLASSES),
            mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
            to_rgb=True),
        backbone=backbone,
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=len(CLASSES),
                  in_channels=channels,
                  loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
                  topk=(1, )))


def cls_config(data_root: str, kind: str = 'resnet',
               quantizer: Optional[Dict[str, Any]] = None) -> Config:
    """A whole mmpretrain config over :func:`make_imagenet_folder` data."""
    test_pipeline = [dict(type='LoadImageFromFile'),
                     dict(type='PackInputs')]
    train_pipeline = [dict(type='LoadImageFromFile'),
                      dict(type='RandomFlip', prob=0.5,
                           direction='horizontal'),
                      dict(type='PackInputs')]

    def loader(split: str, pipeline: list, batch_size: int) -> dict:
        return dict(
            batch_size=batch_size, num_workers=0, persistent_workers=False,
            dataset=dict(type='CustomDataset', data_root=data_root,
                         data_prefix=split, with_label=True,
                         pipeline=pipeline),
            sampler=dict(type='DefaultSampler', shuffle=split == 'train'),
            collate_fn=dict(type='default_collate'))

    cfg = dict(
        model=cls_model(kind),
        train_dataloader=loader('train', train_pipeline, 8),
        val_dataloader=loader('val', test_pipeline, 8),
        val_evaluator=dict(type='Accuracy', topk=(1, )),
        test_dataloader=loader('val', test_pipeline, 8),
        test_evaluator=dict(type='Accuracy', topk=(1, )),
        quantizer=quantizer or dict(type='mmquant.BitSplitQuantizer'),
        **_runtime('mmpretrain'))
    return Config(cfg)


def det_model(kind: str) -> Dict[str, Any]:
    """A tiny mmdet detector config for 64x64 images.

    Args:
        kind (str): ``'retinanet'`` or ``'faster_rcnn'``.
    """
    backbone = dict(
        type='ResNet', depth=18, base_channels=8, stem_channels=8,
        num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True,
        style='pytorch')
    preproc = dict(type='DetDataPreprocessor',
                   mean=[123.675, 116.28, 103.53],
                   std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                   pad_size_divisor=32)
    if kind == 'retinanet':
        return dict(
            type='RetinaNet',
            data_preprocessor=preproc,
            backbone=backbone,
            neck=dict(type='FPN', in_channels=[8, 16, 32, 64],
                      out_channels=16, start_level=1,
                      add_extra_convs='on_input', num_outs=5),
            bbox_head=dict(
                type='RetinaHead', num_classes=len(DET_CLASSES),
                in_channels=16, stacked_convs=2, feat_channels=16,
                anchor_generator=dict(
                    type='AnchorGenerator', octave_base_scale=2,
                    scales_per_octave=2, ratios=[0.5, 1.0, 2.0],
                    strides=[8, 16, 32, 64, 128]),
                bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                                target_means=[.0, .0, .0, .0],
                                target_stds=[1.0, 1.0, 1.0, 1.0]),
                loss_cls=dict(type='FocalLoss', use_sigmoid=True,
                              gamma=2.0, alpha=0.25, loss_weight=1.0),
                loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
            train_cfg=dict(
                assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5,
                              neg_iou_thr=0.4, min_pos_iou=0,
                              ignore_iof_thr=-1),
                sampler=dict(type='PseudoSampler'), allowed_border=-1,
                pos_weight=-1, debug=False),
            test_cfg=dict(nms_pre=200, min_bbox_size=0, score_thr=0.05,
                          nms=dict(type='nms', iou_threshold=0.5),
                          max_per_img=20))
    if kind != 'faster_rcnn':
        raise ValueError(kind)
    return dict(
        type='FasterRCNN',
        data_preprocessor=preproc,
        backbone=backbone,
        neck=dict(type='FPN', in_channels=[8, 16, 32, 64], out_channels=16,
                  num_outs=5),
        rpn_head=dict(
            type='RPNHead', in_channels=16, feat_channels=16,
            anchor_generator=dict(type='AnchorGenerator', scales=[4],
                                  ratios=[0.5, 1.0, 2.0],
                                  strides=[4, 8, 16, 32, 64]),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                            target_means=[.0, .0, .0, .0],
                            target_stds=[1.0, 1.0, 1.0, 1.0]),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True,
                          loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        roi_head=dict(
            type='StandardRoIHead',
            bbox_roi_extractor=dict(
                type='SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=7,
                               sampling_ratio=0),
                out_channels=16, featmap_strides=[4, 8, 16, 32]),
            bbox_head=dict(
                type='Shared2FCBBoxHead', in_channels=16,
                fc_out_channels=32, roi_feat_size=7,
                num_classes=len(DET_CLASSES),
                bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                                target_means=[0., 0., 0., 0.],
                                target_stds=[0.1, 0.1, 0.2, 0.2]),
                reg_class_agnostic=False,
                loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False,
                              loss_weight=1.0),
                loss_bbox=dict(type='L1Loss', loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(
                assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7,
                              neg_iou_thr=0.3, min_pos_iou=0.3,
                              match_low_quality=True, ignore_iof_thr=-1),
                sampler=dict(type='RandomSampler', num=64, pos_fraction=0.5,
                             neg_pos_ub=-1, add_gt_as_proposals=False),
                allowed_border=-1, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=200, max_per_img=100,
                              nms=dict(type='nms', iou_threshold=0.7),
                              min_bbox_size=0),
            rcnn=dict(
                assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5,
                              neg_iou_thr=0.5, min_pos_iou=0.5,
                              match_low_quality=False, ignore_iof_thr=-1),
                sampler=dict(type='RandomSampler', num=64,
                             pos_fraction=0.25, neg_pos_ub=-1,
                             add_gt_as_proposals=True),
                pos_weight=-1, debug=False)),
        test_cfg=dict(
            rpn=dict(nms_pre=200, max_per_img=50,
                     nms=dict(type='nms', iou_threshold=0.7),
                     min_bbox_size=0),
            rcnn=dict(score_thr=0.05,
                      nms=dict(type='nms', iou_threshold=0.5),
                      max_per_img=20)))


def det_config(data_root: str, kind: str = 'retinanet',
               quantizer: Optional[Dict[str, Any]] = None) -> Config:
    """A whole mmdet config over :func:`make_coco` data."""
    metainfo = dict(classes=DET_CLASSES)
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(64, 64), keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='PackDetInputs',
             meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                        'scale_factor'))]
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='Resize', scale=(64, 64), keep_ratio=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs')]

    def loader(split: str, pipeline: list, train: bool) -> dict:
        return dict(
            batch_size=4, num_workers=0, persistent_workers=False,
            drop_last=False,
            sampler=dict(type='DefaultSampler', shuffle=train),
            dataset=dict(
                type='CocoDataset', data_root=data_root, metainfo=metainfo,
                ann_file=f'annotations/{split}.json',
                data_prefix=dict(img=f'{split}/'), test_mode=not train,
                filter_cfg=dict(filter_empty_gt=True, min_size=1)
                if train else None,
                pipeline=pipeline))

    evaluator = dict(type='CocoMetric',
                     ann_file=osp.join(data_root, 'annotations', 'val.json'),
                     metric='bbox', format_only=False)
    cfg = dict(
        model=det_model(kind),
        train_dataloader=loader('train', train_pipeline, True),
        val_dataloader=loader('val', test_pipeline, False),
        val_evaluator=evaluator,
        test_dataloader=loader('val', test_pipeline, False),
        test_evaluator=copy.deepcopy(evaluator),
        quantizer=quantizer or dict(type='mmquant.BitSplitQuantizer'),
        **_runtime('mmdet'))
    return Config(cfg)


# ------------------------------------------------------ float checkpoints --
def _set_bn_stats(model: torch.nn.Module, loader: Any,
                  dtype: torch.dtype = torch.float32) -> None:
    """Set every BatchNorm's running statistics to the exact average over
    ``loader`` (a few training steps leave them far from converged),
    computing in ``dtype``."""
    bns = [m for m in model.modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for data in loader:
            data = model.data_preprocessor(data, False)
            model.extract_feat(data['inputs'].to(dtype))
    for m in bns:
        m.momentum = 0.1
    model.eval()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create parameters in ``dtype`` (torch's random initialisers draw
    float32 values with CPU-specific vector code, float64 ones do not)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _train_classifier(cfg: Config, steps: int, lr: float, seed: int = 0
                      ) -> torch.nn.Module:
    """A few Adam steps on the folder dataset, then BatchNorm statistics
    of the training set; eval mode.

    Training runs in float64 and the result is rounded to float32, so that
    the model is the same on every CPU whatever kernels torch picks
    (``ATEN_CPU_CAPABILITY``): in float32, the order of additions of
    another kernel changed MobileNetV2's trained weights by up to 220 %
    (measured: default vs AVX2/AVX512 kernels), which moved the tests'
    error ratios across their thresholds; in float64 the kernels' rounding
    differences stay far below float32's resolution (``tools/run_tests.sh``
    checks this on every run: see ``tests/openmmlab/test_determinism.py``).
    """
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    from mmquant.apis.ptq import build_float_model
    set_random_seed(seed)  # random, numpy (the flips) and torch
    init_default_scope('mmpretrain')
    model = build_float_model(cfg).double()
    model.init_weights()
    loader = Runner.build_dataloader(
        dict(copy.deepcopy(cfg.train_dataloader), batch_size=12),
        seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    done = 0
    while done < steps:
        for data in loader:
            data = model.data_preprocessor(data, True)
            data['inputs'] = data['inputs'].double()
            losses = model(**data, mode='loss')
            loss = sum(v for k, v in losses.items() if 'loss' in k)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    _set_bn_stats(model, loader, torch.float64)
    return model.float()


def _calibrate_bn(cfg: Config, seed: int = 0) -> torch.nn.Module:
    """A detector with random weights and BatchNorm statistics of the data
    (so its activations have a realistic scale), computed in float64 like
    :func:`_train_classifier`."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    from mmquant.apis.ptq import build_float_model
    set_random_seed(seed)
    init_default_scope('mmdet')
    with _default_dtype(torch.float64):  # float32 init is CPU-dependent
        model = build_float_model(cfg)
    _set_bn_stats(model, Runner.build_dataloader(
        copy.deepcopy(cfg.val_dataloader), seed=seed), torch.float64)
    return model.float()


def load_committed(cfg: Config, kind: str) -> torch.nn.Module:
    """The committed float weights of a tiny classifier (see
    :data:`COMMITTED`), checked against their sha256 and loaded strictly.
    """
    from mmengine.registry import init_default_scope

    from mmquant.apis.ptq import build_float_model
    from mmquant.checkpoint.float_loading import sha256_file
    path, digest = COMMITTED[kind]
    got = sha256_file(path)
    assert got == digest, (
        f'{path} changed (sha256 {got}); if on purpose, record the new '
        'sha256 in COMMITTED')
    init_default_scope('mmpretrain')
    return build_float_model(cfg, path)


def save_float(model: torch.nn.Module, path: str) -> str:
    """Save an mmengine-style float checkpoint (``{'state_dict', 'meta'}``)."""
    torch.save(dict(state_dict=model.state_dict(), meta=dict(test=True)),
               path)
    return path


#: Adam steps and learning rate of each tiny classifier (measured: ResNet
#: reaches 100% val top-1, MobileNetV2 x0.25 83%).
TRAINING = dict(resnet=(12, 3e-3), mobilenet=(96, 3e-3))

#: Classifiers whose float weights are committed instead of trained in the
#: test session, with the sha256 of the file. MobileNetV2's training is
#: chaotic even in float64: the last-bit differences of another CPU
#: kernel (default vs AVX2/AVX512) grow to completely different weights
#: within 16 Adam steps (measured: relative weight differences of 2.3-3.0
#: after 24-96 steps at every learning rate tried, 1e-3..1e-2), so every
#: machine would test another model. The file is ``_train_classifier``
#: on this data, as ``python tests/openmmlab/make_checkpoints.py`` writes
#: it.
COMMITTED = dict(mobilenet=(
    osp.join(osp.dirname(osp.abspath(__file__)), 'data',
             'mobilenet_x0.25_tiny.pth'),
    '41aacd8be7e3200f26fcc0e65e4a04fe47a31b0135dd559d532640a16f78ae51'))


# ------------------------------------------------------------ PTQ runner --
def run_ptq_capture(cfg: Config, checkpoint: Optional[str], work_dir: str,
                    **kwargs: Any):
    """:func:`mmquant.apis.ptq.run_ptq` (the path of ``tools/ptq.py``),
    also returning the quantized model it saved.

    Returns:
        tuple: ``(report dict, quantized model)``.
    """
    from mmquant.apis import ptq
    saved = {}
    real = ptq.save_quantized

    def spy(model, path, meta=None):
        saved['model'] = model
        return real(model, path, meta)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ptq, 'save_quantized', spy)
        report = ptq.run_ptq(cfg, checkpoint, work_dir, **kwargs)
    return report, saved['model']


class PTQRun:
    """One finished ``run_ptq``: its config, report, model and files."""

    def __init__(self, cfg: Config, ckpt: str, work_dir: str,
                 report: Dict[str, Any], qmodel: torch.nn.Module) -> None:
        self.cfg = cfg
        self.ckpt = ckpt
        self.work_dir = work_dir
        self.report = report
        self.qmodel = qmodel
        self.int_path = report['extra']['int_checkpoint']
        self.metrics = report['extra']['metrics']


class LazyCache:
    """Makes each expensive thing once, on first use, and keeps it for the
    session; temporary folders come from pytest's factory."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self._cache: Dict[Any, Any] = {}

    def _once(self, key: Any, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def tmp(self, name: str) -> str:
        return str(self.factory.mktemp(name))


class Workspace(LazyCache):
    """Package-wide lazy cache of datasets, float checkpoints and PTQ runs,
    so that every expensive step runs once whatever tests are selected."""

    @property
    def cls_root(self) -> str:
        """3 classes x (10 train, 8 val) 32x32 images."""
        return self._once('cls_root', lambda: make_imagenet_folder(
            self.tmp('imagenet_tiny'), dict(train=10, val=8)))

    @property
    def coco_root(self) -> str:
        """8 train, 4 val 64x64 images."""
        return self._once('coco_root', lambda: make_coco(
            self.tmp('coco_tiny'), dict(train=8, val=4)))

    def cls_cfg(self, kind: str, **quantizer: Any) -> Config:
        return cls_config(self.cls_root, kind, small_quantizer(**quantizer))

    def det_cfg(self, kind: str, **quantizer: Any) -> Config:
        return det_config(self.coco_root, kind, small_quantizer(**quantizer))

    def float_ckpt(self, kind: str) -> str:
        """Float checkpoint: classifiers trained a few steps, detectors
        with random weights and BatchNorm statistics of the data."""
        def make() -> str:
            if kind in ('retinanet', 'faster_rcnn'):
                model = _calibrate_bn(self.det_cfg(kind))
            elif kind in COMMITTED:
                model = load_committed(self.cls_cfg(kind), kind)
            else:
                steps, lr = TRAINING[kind]
                model = _train_classifier(self.cls_cfg(kind), steps, lr)
            return save_float(model, osp.join(self.tmp('float'),
                                              f'{kind}.pth'))
        return self._once(('ckpt', kind), make)

    def ptq(self, kind: str, calib_samples: int = 16, do_eval: bool = True,
            **quantizer: Any) -> PTQRun:
        """``run_ptq`` of a tiny model (evaluated on its whole val set)."""
        key = ('ptq', kind, calib_samples, do_eval,
               tuple(sorted(quantizer.items())))

        def make() -> PTQRun:
            det = kind in ('retinanet', 'faster_rcnn')
            cfg = self.det_cfg(kind, **quantizer) if det else \
                self.cls_cfg(kind, **quantizer)
            ckpt = self.float_ckpt(kind)
            work_dir = self.tmp(f'ptq_{kind}')
            report, qmodel = run_ptq_capture(
                cfg, ckpt, work_dir, calib_samples=calib_samples,
                do_eval=do_eval)
            return PTQRun(cfg, ckpt, work_dir, report, qmodel)
        return self._once(key, make)


# --------------------------------------------------------------- fixtures --
@pytest.fixture(scope='package', autouse=True)
def _one_thread():
    """One torch thread: on 2 shared cores, two OpenMP threads make these
    tiny forwards ~100x slower (measured: 12 ms vs 2 s per Faster R-CNN
    pass)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='package')
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory)


def small_quantizer(**kw: Any) -> Dict[str, Any]:
    """A BitSplit quantizer dict sized for the tiny tests."""
    q = dict(type='mmquant.BitSplitQuantizer', w_bits=4, a_bits=8,
             rows_per_layer=1024, max_rounds=20, act_samples=1 << 14,
             seed=0)
    q.update(kw)
    return q


def quantized_layers(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    from mmquant.nn import QuantizedLayer
    return {n: m for n, m in model.named_modules()
            if isinstance(m, QuantizedLayer)}


def tensors_of(out: Any) -> List[torch.Tensor]:
    """Flatten a (nested) model output into its tensors."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in tensors_of(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in tensors_of(out[k])]
    if hasattr(out, 'bboxes'):  # InstanceData proposals
        return [out.bboxes]
    return []


def rel_error(outs: Any, refs: Any) -> float:
    """``||out - ref|| / ||ref||`` over all tensors of two outputs."""
    a, b = tensors_of(outs), tensors_of(refs)
    assert len(a) == len(b) and a
    num = sum(float((x - y).float().pow(2).sum()) for x, y in zip(a, b))
    den = sum(float(y.float().pow(2).sum()) for y in b)
    return (num / den) ** 0.5
