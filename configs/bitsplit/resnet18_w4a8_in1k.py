_base_ = [
    'mmpretrain::resnet/resnet18_8xb32_in1k.py',
    '../_base_/quantizers/bitsplit_w4a8.py'
]
