# The offline benchmark suite: three models on real Fashion-MNIST data,
# each quantized by RTN, BitSplit fast mode and BitSplit with error
# compensation at W8A8/W4A8/W3A8/W2A8 in one run:
#
#   python tools/analysis_tools/benchmark.py \
#       configs/benchmarks/fmnist_offline.py \
#       --readme configs/bitsplit/README.md \
#       --metafile configs/bitsplit/metafile.yml
#
# Data and the converted ImageNet MobileNetV2 backbone come from
# `bash tools/install.sh` (see docs/benchmarks.md).
models = [
    dict(
        name='ResNet-18 (16 ch)',
        config='configs/fmnist/resnet18-w16_fmnist.py',
        checkpoint='checkpoints/resnet18-w16_fmnist.pth',
        dataset='Fashion-MNIST'),
    dict(
        name='MobileNetV2 (ImageNet) + linear',
        config='configs/fmnist/mobilenet-v2_in1k-pre_fmnist-linear.py',
        checkpoint='checkpoints/mobilenet-v2_in1k-pre_fmnist-linear.pth',
        dataset='Fashion-MNIST'),
    dict(
        name='RetinaNet ResNet-18 (12 ch)',
        config='configs/fmnist/retinanet_r18-w12_fmnist-det.py',
        checkpoint='checkpoints/retinanet_r18-w12_fmnist-det.pth',
        dataset='Fashion-MNIST canvases'),
]
methods = ['rtn', 'bitsplit-fast', 'bitsplit']
bits = ['w8a8', 'w4a8', 'w3a8', 'w2a8']
calib_samples = 256
# Where `--readme`/`--metafile` write the config of every quantized run
# (the model config plus that run's quantizer): a metafile entry's Config.
entry_configs = 'configs/bitsplit/fmnist'
