# Bundled mmquant example: a tiny ResNet-18 (ResNet_CIFAR layout, 12 base
# channels, 20 convs, ~0.39 M params) trained on Fashion-MNIST, then
# quantized with BitSplit at W4A8.
#
#   python tools/train.py configs/examples/fmnist_resnet_tiny.py
#   python tools/ptq.py configs/examples/fmnist_resnet_tiny.py \
#       checkpoints/fmnist_resnet_tiny.pth
#
# Data: real Fashion-MNIST in `data/fashion-mnist`, read by the dataloaders
# of configs/_base_/datasets/fmnist.py (which says how to prepare it).
#
# See checkpoints/README.md for how checkpoints/fmnist_resnet_tiny.pth was
# produced and its float accuracy.
_base_ = ['../_base_/datasets/fmnist.py']

default_scope = 'mmpretrain'

# ------------------------------------------------------------------ model --
data_preprocessor = dict(
    type='ClsDataPreprocessor',
    num_classes=10,
    # Fashion-MNIST pixel statistics (1-channel, 0..255)
    mean=[72.94],
    std=[90.0],
    to_rgb=False)

model = dict(
    type='ImageClassifier',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='ResNet_CIFAR',
        depth=18,
        in_channels=1,
        stem_channels=12,
        base_channels=12,
        num_stages=4,
        strides=(1, 2, 2, 2),
        out_indices=(3, ),
        style='pytorch'),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=96,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))

# --------------------------------------------------------------- schedule --
max_epochs = 3
optim_wrapper = dict(
    optimizer=dict(
        type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True))
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
val_cfg = dict()
test_cfg = dict()

# ---------------------------------------------------------------- runtime --
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs,
                    max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='gloo'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)

# -------------------------------------------------------------- quantizer --
custom_imports = dict(imports=['mmquant'], allow_failed_imports=False)
quantizer = dict(type='mmquant.BitSplitQuantizer', w_bits=4, a_bits=8)
