_base_ = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    '../_base_/quantizers/bitsplit_w4a8.py'
]

# RetinaNet's extra FPN level P6 is a 3x3 conv on C5 (add_extra_convs=
# 'on_input'): 2048 x 3 x 3 = 18432 inputs, so its statistics (A = X^T X in
# float64) take 2.7 GB, above mmquant's default budget of 2 GiB. The budget
# is raised rather than leaving that layer float; quantization of this
# model needs about 3 GB of memory for the largest layer's statistics.
quantizer = dict(max_stats_bytes=3 << 30)
