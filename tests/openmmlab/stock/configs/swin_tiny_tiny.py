# Swin-T from mmpretrain's stock config, on a tiny 3-class folder dataset
# of 64x64 images (tests/openmmlab/stock generates it and passes its
# path with --cfg-options). Only the dataset, the class count, the image
# size and the batch sizes/workers differ from the stock config, and the
# width (below).
_base_ = 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py'

custom_imports = dict(imports=['mmquant'], allow_failed_imports=False)

data_root = 'data/tiny_imagenet/'
num_classes = 3

# class count: the preprocessor's (one-hot labels, and Mixup/CutMix)
# and the head's
data_preprocessor = dict(num_classes=num_classes)
# Image size: 64 px, with the window scaled as the stock 384 px config
# scales it (img_size / 32: 224 -> 7, 384 -> 12, 64 -> 2); the stock
# window of 7 does not fit the 4x4 and 2x2 maps of the last stages.
# Width: 1/3 (embed_dims 32, head dim 32 as stock, depths as stock): at
# stock width (96-768) its Linear layers have ConvNeXt-T's shapes, whose
# PTQ measured 53 s on the shared 2-core CPU, over the matrix's budget of
# a few minutes for all ten models.
model = dict(
    backbone=dict(
        img_size=64,
        arch=dict(
            _delete_=True,
            embed_dims=32,
            depths=[2, 2, 6, 2],
            num_heads=[1, 2, 4, 8]),
        stage_cfgs=dict(block_cfgs=dict(window_size=2))),
    head=dict(num_classes=num_classes, in_channels=256))

# the stock pipelines with small sizes
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=64,
        backend='pillow',
        interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(pad_val=[104, 116, 124], interpolation='bicubic')),
    dict(
        type='RandomErasing',
        erase_prob=0.25,
        mode='rand',
        min_area_ratio=0.02,
        max_area_ratio=1 / 3,
        fill_color=[103.53, 116.28, 123.675],
        fill_std=[57.375, 57.12, 58.395]),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='ResizeEdge',
        scale=73,
        edge='short',
        backend='pillow',
        interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=64),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        _delete_=True,  # ImageNet's `split` does not apply to a folder
        type='CustomDataset',
        data_root=data_root,
        data_prefix='train',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='val',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# top-5 accuracy needs at least 5 classes
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

# PTQ sized for the test matrix (see tests/openmmlab/stock/conftest.py)
quantizer = dict(
    type='mmquant.BitSplitQuantizer',
    w_bits=4,
    a_bits=8,
    error_compensation=True,
    rows_per_layer=512,
    max_rounds=5,
    act_samples=4096,
    seed=0)
