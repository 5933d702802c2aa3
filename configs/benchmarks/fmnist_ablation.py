# The ablation of BitSplit's settings on the offline benchmark's three
# models (real Fashion-MNIST data): the ridge (`damping`), BatchNorm
# re-estimation and the treatment of the output layers, in both modes at
# W4A8, W3A8 and W2A8. docs/solver.md explains each setting;
#
#   python tools/analysis_tools/benchmark_ablation.py \
#       configs/benchmarks/fmnist_ablation.py \
#       --baseline configs/bitsplit/results/fmnist_offline.json \
#       --doc docs/solver.md configs/bitsplit/README.md
#
# writes the tables (the first variant's rows are taken from the committed
# benchmark, which ran the same settings on the same data).
_base_ = ['./fmnist_offline.py']

modes = ['bitsplit-fast', 'bitsplit']
bits = ['w4a8', 'w3a8', 'w2a8']
variants = [
    dict(name='default', quantizer=dict(),
         title="mmquant's defaults: ridge 0.1 x max(1, N/rows), no "
         'BatchNorm re-estimation, output layers reconstructed'),
    dict(name='ridge-0', quantizer=dict(damping=0.0),
         title='no ridge (the paper and its code)'),
    dict(name='ridge-1', quantizer=dict(damping=1.0)),
    dict(name='ridge-0.01', quantizer=dict(damping=0.01)),
    dict(name='bn', quantizer=dict(bn_reestimation=True),
         title='BatchNorm statistics re-estimated after quantization '
         '(as the authors\' code)'),
    dict(name='out-rtn', quantizer=dict(output_method='rtn'),
         title='output layers rounded by weight-only MSE (as the '
         'authors\' code treats the last fc)'),
    dict(name='ridge-flat', quantizer=dict(damping_scales_with_rows=False),
         title='ridge 0.1 that does not grow with N/rows'),
    dict(name='authors', quantizer=dict(
        damping=0.0, bn_reestimation=True, output_method='rtn'),
        title="the authors' released code's choices together"),
]
