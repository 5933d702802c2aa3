# Fashion-MNIST with mmpretrain's FashionMNIST (28x28 gray images, 10
# classes): the training, test and calibration dataloaders of the bundled
# example (configs/examples/fmnist_resnet_tiny.py) and of the configs built
# on it. A config that changes `train_pipeline`/`test_pipeline` overrides
# the dataloaders' `pipeline` too (they hold these lists, resolved when
# this file is read).
#
# Data: Debian's `dataset-fashion-mnist` ships the four *-ubyte.gz files in
# /usr/share/datasets/fashion-mnist. mmpretrain's FashionMNIST only reads
# the *decompressed* files (it checks for and opens `train-images-idx3-ubyte`
# etc.), so they are gunzipped once into `data/fashion-mnist` (ignored by
# git; tools/install.sh does it), e.g.:
#
#   mkdir -p data/fashion-mnist && for f in \
#       /usr/share/datasets/fashion-mnist/*-ubyte.gz; do \
#       b=$(basename "$f" .gz); \
#       gunzip -c "$f" > "data/fashion-mnist/$b"; done
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
