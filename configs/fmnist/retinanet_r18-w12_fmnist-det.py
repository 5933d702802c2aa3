# Detection benchmark: RetinaNet on Fashion-MNIST detection canvases
# (96x96 gray, 1-4 garments each, 10 classes; built offline by
# tools/dataset_converters/make_fmnist_det.py) and evaluated with mmdet's
# CocoDataset + CocoMetric, the same code path as COCO.
#
# The backbone is the bundled Fashion-MNIST classifier of
# configs/examples/fmnist_resnet_tiny.py (mmpretrain's ResNet_CIFAR: 3x3
# stem, no max-pool, stage strides 1, 2, 2, 2, 12 base channels),
# initialised from its float checkpoint. Stages 3 and 4 (strides 4 and 8,
# 48 and 96 channels) feed an FPN with one extra level: strides 4, 8, 16
# (24x24, 12x12, 6x6 maps on a 96x96 canvas).
#
#   python tools/dataset_converters/make_fmnist_det.py   # data/fmnist_det
#   python tools/train.py configs/fmnist/retinanet_r18-w12_fmnist-det.py
#   python tools/ptq.py configs/fmnist/retinanet_r18-w12_fmnist-det.py \
#       work_dirs/retinanet_r18-w12_fmnist-det/epoch_8.pth
default_scope = 'mmdet'
# mmpretrain.models registers ResNet_CIFAR (built across scopes below);
# mmquant registers the quantizer.
custom_imports = dict(
    imports=['mmpretrain.models', 'mmquant'], allow_failed_imports=False)

classes = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
           'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
img_scale = (96, 96)

# ------------------------------------------------------------------ model --
model = dict(
    type='RetinaNet',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        # Fashion-MNIST pixel statistics (1-channel, 0..255), as for the
        # classifier the backbone comes from.
        mean=[72.94],
        std=[90.0],
        bgr_to_rgb=False,
        pad_size_divisor=16),
    backbone=dict(
        type='mmpretrain.ResNet_CIFAR',
        depth=18,
        in_channels=1,
        stem_channels=12,
        base_channels=12,
        num_stages=4,
        strides=(1, 2, 2, 2),
        out_indices=(2, 3),
        style='pytorch',
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/fmnist_resnet_tiny.pth',
            prefix='backbone.')),
    neck=dict(
        type='FPN',
        in_channels=[48, 96],
        out_channels=64,
        start_level=0,
        add_extra_convs='on_output',
        num_outs=3),
    bbox_head=dict(
        type='RetinaHead',
        num_classes=len(classes),
        in_channels=64,
        stacked_convs=2,
        feat_channels=64,
        anchor_generator=dict(
            type='AnchorGenerator',
            # base anchors 16-25 px at stride 4 ... 64-101 px at stride 16
            octave_base_scale=4,
            scales_per_octave=3,
            ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[.0, .0, .0, .0],
            target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(
            type='FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    train_cfg=dict(
        assigner=dict(
            type='MaxIoUAssigner',
            pos_iou_thr=0.5,
            neg_iou_thr=0.4,
            min_pos_iou=0,
            ignore_iof_thr=-1),
        sampler=dict(type='PseudoSampler'),
        allowed_border=-1,
        pos_weight=-1,
        debug=False),
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.5),
        max_per_img=100))

# ------------------------------------------------------------------- data --
dataset_type = 'CocoDataset'
data_root = 'data/fmnist_det/'
metainfo = dict(classes=classes)

train_pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    # An identity on the 96x96 canvases; it records the `scale_factor`
    # that the heads' predict(rescale=True) needs.
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]

train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/val.json',
    metric='bbox',
    format_only=False)
test_evaluator = val_evaluator

# Calibration (read by mmquant's tools/ptq.py): training canvases, test
# pipeline (no augmentation).
calib_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/train.json',
        data_prefix=dict(img='train/'),
        test_mode=True,
        pipeline=test_pipeline))

# --------------------------------------------------------------- schedule --
# 4000 canvases / 16 = 250 iterations per epoch.
max_epochs = 8
train_cfg = dict(
    type='EpochBasedTrainLoop', max_epochs=max_epochs,
    val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=200),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[6, 7],
        gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)

# ---------------------------------------------------------------- runtime --
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='gloo'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)

# -------------------------------------------------------------- quantizer --
quantizer = dict(type='mmquant.BitSplitQuantizer', w_bits=4, a_bits=8)
