"""A top-level ``data_preprocessor`` (where mmpretrain's stock configs put
it) reaches the model exactly as mmengine's ``Runner`` merges it: in
``build_float_model`` (tools/ptq.py), in ``QuantizedModel`` (tools/test.py)
and so in calibration and evaluation."""
import copy

import torch
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from mmquant.apis.ptq import build_float_model, float_model_cfg
from mmquant.models import QuantizedModel


def _top_level(cfg):
    """The config written the stock way: preprocessor only at the top."""
    cfg = copy.deepcopy(cfg)
    cfg.data_preprocessor = cfg.model.pop('data_preprocessor')
    return cfg


def _preprocess(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (3, 32, 32), generator=gen,
                        dtype=torch.uint8)
    return model.data_preprocessor(dict(inputs=[img]), False)['inputs']


def test_build_float_model_merges_top_level_preprocessor(ws, tmp_path):
    cfg = _top_level(ws.cls_cfg('resnet'))
    cfg.work_dir = str(tmp_path)
    ours = build_float_model(cfg)
    runner_model = Runner.from_cfg(copy.deepcopy(cfg)).model
    expected = _preprocess(runner_model)
    # the Runner normalises: mean ~0, not raw pixels
    assert float(expected.abs().max()) < 5
    assert torch.equal(_preprocess(ours), expected)
    assert float_model_cfg(cfg)['data_preprocessor'] == \
        cfg.data_preprocessor
    # a model's own preprocessor wins, as in the Runner
    own = ws.cls_cfg('resnet')
    own.data_preprocessor = dict(type='ClsDataPreprocessor', mean=[0.] * 3,
                                 std=[1.] * 3)
    assert float_model_cfg(own)['data_preprocessor'] == \
        own.model.data_preprocessor


def test_quantized_model_merges_top_level_preprocessor(ws, tmp_path):
    cfg = _top_level(ws.cls_cfg('resnet'))
    init_default_scope('mmpretrain')
    reference = _preprocess(build_float_model(cfg))
    wrapped = QuantizedModel(architecture=cfg.model,
                             data_preprocessor=cfg.data_preprocessor)
    assert torch.equal(_preprocess(wrapped), reference)
    assert torch.equal(_preprocess(wrapped.architecture), reference)
    # the Runner path of tools/test.py: the wrapper dict gets the
    # top-level preprocessor and hands it to the architecture
    cfg.model = dict(type='mmquant.QuantizedModel',
                     architecture=cfg.model)
    cfg.work_dir = str(tmp_path)
    runner_model = Runner.from_cfg(cfg).model
    assert torch.equal(_preprocess(runner_model), reference)


def test_ptq_calibrates_on_normalised_inputs(ws, tmp_path):
    """The float metrics of run_ptq on the stock-style config equal those
    of the config with the preprocessor inside ``model``."""
    run = ws.ptq('resnet')
    from mmquant.apis.evaluation import evaluate
    cfg = _top_level(run.cfg)
    model = build_float_model(cfg, run.ckpt)
    assert evaluate(model, cfg) == run.metrics['float']
