# Benchmark classifier 1 of 3: a ResNet-18 (ResNet_CIFAR layout: 3x3 stem,
# no max-pool, 8 basic blocks, 20 convolutions) with 16 base channels,
# trained from scratch on the 60,000 real Fashion-MNIST training images.
# It shares the bundled example's data pipeline and only widens the network
# and trains longer (goal: float test top-1 >= 92 %).
#
#   python tools/train.py configs/fmnist/resnet18-w16_fmnist.py
#   python tools/make_example_checkpoint.py \
#       configs/fmnist/resnet18-w16_fmnist.py \
#       work_dirs/resnet18-w16_fmnist --out checkpoints/resnet18-w16_fmnist.pth
#
# checkpoints/README.md records how the committed checkpoint was made.
_base_ = ['../examples/fmnist_resnet_tiny.py']

model = dict(
    backbone=dict(stem_channels=16, base_channels=16),
    head=dict(in_channels=128))

max_epochs = 10
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
         end=200),
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
