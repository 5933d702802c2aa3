_base_ = ['mmpretrain::resnet/resnet18_8xb32_in1k.py']

# mmquant: BitSplit post-training quantization at W4A8.
#   python tools/ptq.py configs/bitsplit/resnet18_w4a8_in1k.py FLOAT_CKPT
custom_imports = dict(imports=['mmquant'], allow_failed_imports=False)
quantizer = dict(
    type='mmquant.BitSplitQuantizer',
    w_bits=4,
    a_bits=8,
    error_compensation=True,
    rows_per_layer=16384,
    seed=0)
