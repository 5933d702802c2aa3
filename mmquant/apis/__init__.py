"""The OpenMMLab pipeline: PTQ runs, evaluation, benchmarks, ablations.

The modules are imported on use (``from mmquant.apis.ptq import run_ptq``);
importing this package imports nothing else.
"""
