# mmquant: BitSplit post-training quantization at W4A8, error-compensated.
# Add this file to the _base_ of any mmpretrain/mmdet config, then run
#   python tools/ptq.py YOUR_CONFIG FLOAT_CKPT
custom_imports = dict(imports=['mmquant'], allow_failed_imports=False)
quantizer = dict(
    type='mmquant.BitSplitQuantizer',
    w_bits=4,
    a_bits=8,
    error_compensation=True,
    rows_per_layer=16384,
    seed=0)
