_base_ = ['./resnet18_w4a8_in1k.py']

quantizer = dict(w_bits=3)
