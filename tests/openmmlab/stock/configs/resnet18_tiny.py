# ResNet-18 from mmpretrain's stock config, on a tiny 3-class folder dataset
# of 64x64 images (tests/openmmlab/stock generates it and passes its
# path with --cfg-options). Only the dataset, the class count, the image
# size and the batch sizes/workers differ from the stock config.
_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'

custom_imports = dict(imports=['mmquant'], allow_failed_imports=False)

data_root = 'data/tiny_imagenet/'
num_classes = 3

# class count: the preprocessor's (one-hot labels) and the head's
data_preprocessor = dict(num_classes=num_classes)
model = dict(head=dict(num_classes=num_classes))

# the stock pipelines with small sizes
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=73, edge='short'),
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
