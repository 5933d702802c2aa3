_base_ = ['./faster-rcnn_r50_fpn_w4a8_coco.py']

quantizer = dict(w_bits=8)
