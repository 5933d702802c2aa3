# Bundled mmquant example: a tiny ResNet-18 (ResNet_CIFAR layout, 12 base
# channels, 20 convs, ~0.39 M params) trained on Fashion-MNIST, then
# quantized with BitSplit at W4A8.
#
#   python tools/train.py configs/examples/fmnist_resnet_tiny.py
#   python tools/ptq.py configs/examples/fmnist_resnet_tiny.py \
#       checkpoints/fmnist_resnet_tiny.pth
#
# Data: Debian's `dataset-fashion-mnist` ships the four *-ubyte.gz files in
# /usr/share/datasets/fashion-mnist. mmpretrain's FashionMNIST only reads
# the *decompressed* files (it checks for and opens `train-images-idx3-ubyte`
# etc.), so they are gunzipped once into `data/fashion-mnist` (ignored by
# git), e.g.:
#
#   mkdir -p data/fashion-mnist && for f in \
#       /usr/share/datasets/fashion-mnist/*-ubyte.gz; do \
#       b=$(basename "$f" .gz); \
#       gunzip -c "$f" > "data/fashion-mnist/$b"; done
#
# See checkpoints/README.md for how checkpoints/fmnist_resnet_tiny.pth was
# produced and its float accuracy.
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

# ------------------------------------------------------------------- data --
dataset_type = 'FashionMNIST'
data_root = 'data/fashion-mnist'

train_pipeline = [
    dict(type='RandomCrop', crop_size=28, padding=2),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=128,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        download=False,
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=256,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='test',
        # mmpretrain 1.2's MNIST datasets pick their files by `test_mode`,
        # not by `split`: without it the "test" set is the training set.
        test_mode=True,
        download=False,
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))

test_dataloader = val_dataloader
test_evaluator = val_evaluator

# Calibration (read by mmquant's tools/ptq.py): training images, test
# pipeline (no augmentation).
calib_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        download=False,
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)

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
