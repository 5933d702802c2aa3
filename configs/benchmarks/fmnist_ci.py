# The regression check's CI subset: one model of the offline suite at one
# width, 64 calibration images, the first 1,000 Fashion-MNIST test images
# (0.1 point of top-1 per image). Its committed values,
# tests/benchmarks/fmnist_ci/metafile.yml, were measured by this list
# through the same code path the check re-runs:
#
#   python tools/analysis_tools/benchmark.py \
#       configs/benchmarks/fmnist_ci.py \
#       --work-dir work_dirs/benchmark/fmnist_ci \
#       --metafile tests/benchmarks/fmnist_ci/metafile.yml
#   cp work_dirs/benchmark/fmnist_ci/results.json \
#       tests/benchmarks/fmnist_ci/results.json
#
# and tests/benchmarks/test_benchmark_check.py checks them on every CI run:
#
#   python tools/analysis_tools/benchmark.py \
#       configs/benchmarks/fmnist_ci.py \
#       --check tests/benchmarks/fmnist_ci/metafile.yml
models = [
    dict(
        name='ResNet-18 (16 ch)',
        config='configs/fmnist/resnet18-w16_fmnist.py',
        checkpoint='checkpoints/resnet18-w16_fmnist.pth',
        dataset='Fashion-MNIST'),
]
methods = ['bitsplit']
bits = ['w4a8']
calib_samples = 64
eval_samples = 1000
# the entry configs are the offline suite's (same model, method and bits)
entry_configs = 'configs/bitsplit/fmnist'
