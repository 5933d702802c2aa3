# DETR R-50: mmdet's stock config on a tiny 3-class
# COCO-format set of 64x64 images (tests/openmmlab/stock generates it
# and passes its path with --cfg-options). Only the dataset, the class
# count, the image size, the batch sizes/workers and the width (see
# `model` below) differ from the stock config.
_base_ = 'mmdet::detr/detr_r50_8xb2-150e_coco.py'

custom_imports = dict(imports=['mmquant'], allow_failed_imports=False)

data_root = 'data/tiny_coco/'
metainfo = dict(classes=('square', 'wide', 'tall'))
num_classes = 3

# Width: the ResNet-50 backbone at 1/4 (base_channels=16, C5 of 512
# channels), as in the matrix's other R-50 detectors, and the
# transformer's FFNs at 512 hidden channels (stock 2048; embed_dims 256
# and all layers as stock). Measured on the shared 2-core CPU with the
# stock FFNs, PTQ takes 26 s, of which 16 s solving the twelve 2048-input
# FFN layers, over the matrix's budget of a few minutes for ten models.
model = dict(
    backbone=dict(base_channels=16),
    neck=dict(in_channels=[512]),
    encoder=dict(layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512))),
    decoder=dict(layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512))),
    bbox_head=dict(num_classes=num_classes))

# the stock pipelines with small sizes
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[[
            dict(
                type='RandomChoiceResize',
                scales=[(48, 80), (56, 80), (64, 80)],
                keep_ratio=True)
        ],
                    [
                        dict(
                            type='RandomChoiceResize',
                            scales=[(40, 80), (50, 80), (60, 80)],
                            keep_ratio=True),
                        dict(
                            type='RandomCrop',
                            crop_type='absolute_range',
                            crop_size=(38, 60),
                            allow_negative_crop=True),
                        dict(
                            type='RandomChoiceResize',
                            scales=[(48, 80), (56, 80), (64, 80)],
                            keep_ratio=True)
                    ]]),
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
