_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']

# mmquant: BitSplit post-training quantization at W4A8.
#   python tools/ptq.py configs/bitsplit/retinanet_r50_fpn_w4a8_coco.py FLOAT_CKPT
custom_imports = dict(imports=['mmquant'], allow_failed_imports=False)
quantizer = dict(
    type='mmquant.BitSplitQuantizer',
    w_bits=4,
    a_bits=8,
    error_compensation=True,
    rows_per_layer=16384,
    seed=0)
