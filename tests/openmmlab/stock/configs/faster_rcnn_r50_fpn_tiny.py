# Faster R-CNN R-50-FPN: mmdet's stock config on a tiny 3-class
# COCO-format set of 64x64 images (tests/openmmlab/stock generates it
# and passes its path with --cfg-options). Only the dataset, the class
# count, the image size, the batch sizes/workers and the width (see
# `model` below) differ from the stock config.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmquant'], allow_failed_imports=False)

data_root = 'data/tiny_coco/'
metainfo = dict(classes=('square', 'wide', 'tall'))
num_classes = 3

# Width: 1/4 (ResNet-50 with base_channels=16, FPN and heads with 64
# channels; depths and every layer type as stock). Measured on the shared
# 2-core CPU, the solver takes 2.3 s for a 1024 x 3136 layer and grows
# with N^2: the stock RoI head's first fc (256 x 7 x 7 = 12544 inputs,
# 1024 outputs) alone needs ~35 s and 1.3 GB of statistics, over the
# matrix's budget of a few minutes for all ten models. At 1/4 width the
# 64 x 7 x 7 = 3136-input fc solves in ~2 s.
model = dict(
    backbone=dict(base_channels=16),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(
            num_classes=num_classes, in_channels=64, fc_out_channels=256)))

# the stock pipelines with small sizes
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]

train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator

# PTQ sized for the test matrix (see tests/openmmlab/stock/conftest.py)
quantizer = dict(
    type='mmquant.BitSplitQuantizer',
    w_bits=4,
    a_bits=8,
    error_compensation=False,
    rows_per_layer=512,
    max_rounds=5,
    act_samples=4096,
    seed=0)
