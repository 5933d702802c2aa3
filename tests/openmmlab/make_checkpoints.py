"""Write the committed float checkpoints of the OpenMMLab tests.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python tests/openmmlab/make_checkpoints.py

trains each classifier of :data:`conftest.COMMITTED` with the tests' own
``_train_classifier`` on the tests' generated folder dataset, writes its
state dict to ``tests/openmmlab/data/`` and prints its validation top-1
and sha256 (to record in ``COMMITTED``). Run it only when the tiny
model's config changes: the tests then use the committed file, the same
weights on every machine.
"""
import importlib.util
import os.path as osp
import tempfile

import torch

from mmquant.apis.evaluation import evaluate
from mmquant.checkpoint.float_loading import sha256_file
from mmquant.fileio import save_atomic

HERE = osp.dirname(osp.abspath(__file__))


def _conftest():
    spec = importlib.util.spec_from_file_location(
        'mmquant_openmmlab_conftest', osp.join(HERE, 'conftest.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    cf = _conftest()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = cf.make_imagenet_folder(tmp, dict(train=10, val=8))
        for kind, (path, _) in cf.COMMITTED.items():
            cfg = cf.cls_config(root, kind)
            steps, lr = cf.TRAINING[kind]
            model = cf._train_classifier(cfg, steps, lr)
            top1 = evaluate(model, cfg)['accuracy/top1']
            save_atomic(dict(state_dict=model.state_dict()), path)
            print(f'{kind}: val top-1 {top1:.2f} %, {path}, sha256 '
                  f'{sha256_file(path)}')


if __name__ == '__main__':
    main()
