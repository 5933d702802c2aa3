# ImageNet / COCO benchmark list for users who have the data and
# OpenMMLab's float checkpoints (neither is reachable from this project's
# build machines, so no numbers for it are committed):
#
#   python tools/analysis_tools/benchmark.py \
#       configs/benchmarks/in1k_coco.py \
#       --models ResNet-18 --data-root /data/imagenet --device cuda
#   python tools/analysis_tools/benchmark.py \
#       configs/benchmarks/in1k_coco.py \
#       --models 'RetinaNet R-50-FPN' --data-root /data/coco --device cuda
#
# The checkpoints are OpenMMLab's released files, downloaded by you to
# checkpoints/ (names as published in mmpretrain's and mmdet's model zoos).
models = [
    dict(
        name='ResNet-18',
        config='configs/bitsplit/resnet18_w4a8_in1k.py',
        checkpoint='checkpoints/resnet18_8xb32_in1k_20210831-fbbb1da6.pth',
        dataset='ImageNet-1k'),
    dict(
        name='RetinaNet R-50-FPN',
        config='configs/bitsplit/retinanet_r50_fpn_w4a8_coco.py',
        checkpoint='checkpoints/retinanet_r50_fpn_1x_coco_'
        '20200130-c2398f9e.pth',
        dataset='COCO'),
    dict(
        name='Faster R-CNN R-50-FPN',
        config='configs/bitsplit/faster-rcnn_r50_fpn_w4a8_coco.py',
        checkpoint='checkpoints/faster_rcnn_r50_fpn_1x_coco_'
        '20200130-047c8118.pth',
        dataset='COCO'),
]
methods = ['rtn', 'bitsplit-fast', 'bitsplit']
bits = ['w8a8', 'w4a8', 'w3a8']
calib_samples = 256
# Where `--readme`/`--metafile` write the config of every quantized run
# (the model config plus that run's quantizer): a metafile entry's Config.
entry_configs = 'configs/bitsplit/in1k_coco'
