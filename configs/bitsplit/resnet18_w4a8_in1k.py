_base_ = [
    'mmpretrain::resnet/resnet18_8xb32_in1k.py',
    '../_base_/quantizers/bitsplit_w4a8.py'
]

# mmpretrain's ImageNet base writes its root inside each dataloader; the
# top-level variable lets `tools/analysis_tools/benchmark.py --data-root`
# find and move every path under it.
data_root = 'data/imagenet'
