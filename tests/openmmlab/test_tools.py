"""tools/ptq.py, tools/test.py and the stock OpenMMLab test path, and what
they do with bad input.

* ``tools/test.py CONFIG INT_CKPT`` reproduces the quantized metrics that
  ``run_ptq`` reported, for a classifier and a detector;
* a config with ``model=dict(type='mmquant.QuantizedModel', ...)`` and
  ``load_from=<INT ckpt>`` gives the same metrics through mmengine's
  ``Runner.from_cfg(cfg).test()`` and through mmdet's own
  ``tools/test.py`` (the runner's ``load_from`` path);
* ``tools/ptq.py`` as a subprocess writes the INT file and the report;
* typo'd quantizer keys, empty calibration sets, mismatched float
  checkpoints and configs without ``custom_imports``.
"""
import copy
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from mmquant.apis.ptq import (PTQInputError, build_float_model, load_strict,
                              run_ptq)

from .conftest import cls_config, det_model, quantized_layers

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MMDET_TEST = osp.join(
    osp.dirname(importlib.util.find_spec('mmdet').origin), '.mim', 'tools',
    'test.py')


def _load_script(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_config(cfg, folder, name):
    path = osp.join(str(folder), f'{name}.py')
    cfg.dump(path)
    return path


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                PYTHONPATH=ROOT)


def _assert_same_metrics(got, expected):
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert float(got[key]) == value, key


# ------------------------------------------------------- tools/test.py --
@pytest.mark.parametrize('kind', ['resnet', 'retinanet'])
def test_tools_test_reproduces_ptq_metrics(ws, tmp_path, kind):
    run = ws.ptq(kind, calib_samples=16 if kind == 'resnet' else 8,
                 **({} if kind == 'resnet' else dict(
                     error_compensation=True)))
    config = _write_config(run.cfg, tmp_path, f'{kind}_tools_test')
    tools_test = _load_script(osp.join(ROOT, 'tools', 'test.py'),
                              'mmquant_tools_test')
    metrics = tools_test.main([config, run.int_path, '--work-dir',
                               str(tmp_path / 'work')])
    _assert_same_metrics(metrics, run.metrics['quantized'])


@pytest.mark.parametrize('kind', ['resnet', 'retinanet'])
def test_stock_runner_load_from_int_checkpoint(ws, tmp_path, kind):
    """``model=dict(type='mmquant.QuantizedModel', architecture=...)`` and
    ``load_from=<INT ckpt>``: mmengine's runner loads the INT file through
    the model's load_state_dict pre-hook."""
    run = ws.ptq(kind, calib_samples=16 if kind == 'resnet' else 8,
                 **({} if kind == 'resnet' else dict(
                     error_compensation=True)))
    cfg = copy.deepcopy(run.cfg)
    cfg.model = dict(type='mmquant.QuantizedModel', architecture=cfg.model)
    cfg.load_from = run.int_path
    cfg.work_dir = str(tmp_path / 'work')
    cfg.experiment_name = f'stock_{kind}'
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    _assert_same_metrics(metrics, run.metrics['quantized'])
    model = runner.model
    assert sorted(quantized_layers(model.architecture)) == \
        sorted(quantized_layers(run.qmodel))
    for name, layer in quantized_layers(model.architecture).items():
        ref = run.qmodel.get_submodule(name)
        assert torch.equal(layer.qweight, ref.qweight), name
        assert torch.equal(layer.layer.weight, ref.layer.weight), name


def test_mmdet_stock_tools_test(ws, tmp_path, monkeypatch):
    """mmdet's own ``tools/test.py CONFIG INT_CKPT`` (it sets
    ``cfg.load_from``) on a config wrapping the detector in
    ``mmquant.QuantizedModel``."""
    if not osp.isfile(MMDET_TEST):
        pytest.skip(f'{MMDET_TEST} is not installed')
    run = ws.ptq('retinanet', calib_samples=8, error_compensation=True)
    cfg = copy.deepcopy(run.cfg)
    cfg.model = dict(type='mmquant.QuantizedModel', architecture=cfg.model)
    cfg.custom_imports = dict(imports=['mmquant'],
                              allow_failed_imports=False)
    config = _write_config(cfg, tmp_path, 'retinanet_quantized_stock')
    captured = {}
    real_test = Runner.test

    def test(self):
        captured['metrics'] = real_test(self)
        return captured['metrics']

    monkeypatch.setattr(Runner, 'test', test)
    monkeypatch.setattr(sys, 'argv', [
        MMDET_TEST, config, run.int_path, '--work-dir',
        str(tmp_path / 'work')])
    _load_script(MMDET_TEST, 'mmdet_stock_tools_test').main()
    _assert_same_metrics(captured['metrics'], run.metrics['quantized'])


# ------------------------------------------------------- tools/ptq.py --
def test_tools_ptq_subprocess(ws, tmp_path):
    cfg = ws.cls_cfg('resnet')
    config = _write_config(cfg, tmp_path, 'tiny_resnet_cls')
    work = tmp_path / 'work'
    out = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'ptq.py'), config,
         ws.float_ckpt('resnet'), '--work-dir', str(work), '--no-eval',
         '--fast', '--w-bits', '3', '--calib-samples', '8',
         '--calib-batch-size', '4'],
        capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    int_path = work / 'latest' / 'tiny_resnet_cls_w3a8_int.pth'
    assert int_path.is_file()
    report = json.loads((work / 'latest' / 'report.json').read_text())
    assert report['mode'] == 'fast'
    assert report['config']['w_bits'] == 3
    assert report['calib_samples'] == 8
    assert report['extra']['metrics'] == {}
    assert report['extra']['evaluation'] == 'skipped'
    assert report['extra']['int_checkpoint'] == str(
        work / os.readlink(work / 'latest') / int_path.name)
    assert report['summary'] == dict(quantized_layers=21, float_layers=0)
    assert 'evaluation' not in report['timing']


# ---------------------------------------------------------- bad input --
def test_typo_in_quantizer_key(ws, tmp_path):
    cfg = ws.cls_cfg('resnet')
    cfg.quantizer = dict(type='mmquant.BitSplitQuantizer', w_bit=4)
    with pytest.raises(ValueError) as info:
        run_ptq(cfg, None, str(tmp_path), do_eval=False)
    msg = str(info.value)
    assert "'w_bit'" in msg and "did you mean 'w_bits'" in msg, msg
    assert os.listdir(tmp_path) == []  # nothing written


def test_empty_calibration_set(ws, tmp_path):
    # a COCO annotation file with images but no boxes: mmdet's training
    # set (filter_empty_gt) is empty
    ann = tmp_path / 'empty.json'
    ann.write_text(json.dumps(dict(
        images=[dict(id=1, file_name='000.png', width=64, height=64)],
        annotations=[],
        categories=[
            dict(id=1, name='square'),
            dict(id=2, name='wide'),
            dict(id=3, name='tall')
        ])))
    cfg = ws.det_cfg('retinanet')
    cfg.train_dataloader.dataset.ann_file = str(ann)
    with pytest.raises(PTQInputError,
                       match='^the calibration dataset is empty') as info:
        run_ptq(cfg, None, str(tmp_path / 'work'), do_eval=False)
    assert str(ann) in str(info.value)
    # an empty image folder for mmpretrain's CustomDataset
    (tmp_path / 'empty_cls' / 'train').mkdir(parents=True)
    cfg = cls_config(str(tmp_path / 'empty_cls'), 'resnet')
    # (mmpretrain's own message is clear; it is named and passed on)
    with pytest.raises(PTQInputError,
                       match='^cannot load the calibration dataset .*'
                       'RuntimeError: Found 0 files in subfolders'):
        run_ptq(cfg, None, str(tmp_path / 'work2'), do_eval=False)
    # found before anything is written
    assert not osp.exists(tmp_path / 'work')
    assert not osp.exists(tmp_path / 'work2')


def test_float_checkpoint_key_mismatch(ws, tmp_path):
    cfg = ws.cls_cfg('resnet')
    good = torch.load(ws.float_ckpt('resnet'), weights_only=True)
    state = dict(good['state_dict'])
    state.pop('head.fc.bias')
    state['head.fc.extra'] = torch.zeros(3)
    bad = tmp_path / 'bad.pth'
    torch.save(dict(state_dict=state), bad)
    with pytest.raises(ValueError) as info:
        run_ptq(cfg, str(bad), str(tmp_path / 'work'), do_eval=False)
    msg = str(info.value)
    assert 'missing keys: head.fc.bias' in msg, msg
    assert 'unexpected keys: head.fc.extra' in msg, msg
    assert str(bad) in msg
    # nothing is loaded partially
    model = build_float_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        load_strict(model, state, str(bad))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a shape mismatch is listed too
    state = dict(good['state_dict'])
    state['head.fc.weight'] = torch.zeros(5, 64)
    with pytest.raises(ValueError, match=r'head\.fc\.weight: checkpoint '
                       r'\(5, 64\) vs model \(3, 64\)'):
        load_strict(model, state, 'x.pth')
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_quantized_model_in_mmdet_scoped_config(ws, tmp_path):
    """``mmquant.QuantizedModel`` builds from an mmdet-scoped config file
    without ``custom_imports`` (in a fresh process where mmquant was never
    imported) and with it, and loads its ``int_checkpoint``. The child
    configs inherit the detector as users write them:
    ``architecture=_base_.model`` (no ``_delete_=True``)."""
    run = ws.ptq('retinanet', calib_samples=8, error_compensation=True)
    base = _write_config(
        Config(dict(default_scope='mmdet', model=det_model('retinanet'))),
        tmp_path, 'tiny_retinanet_base')
    child = textwrap.dedent(f"""
        _base_ = [{base!r}]
        model = dict(
            type='mmquant.QuantizedModel',
            architecture=_base_.model,
            int_checkpoint={run.int_path!r})
    """)
    plain = tmp_path / 'no_custom_imports.py'
    plain.write_text(child)
    with_imports = tmp_path / 'with_custom_imports.py'
    with_imports.write_text(
        child + "custom_imports = dict(imports=['mmquant'])\n")
    code = textwrap.dedent(f"""
        import sys
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        from mmdet.registry import MODELS
        n_layers = {len(quantized_layers(run.qmodel))}

        def count(model):
            return sum(type(m).__name__ == 'QuantizedLayer'
                       for m in model.modules())

        cfg = Config.fromfile({str(plain)!r})
        assert 'backbone' in cfg.model  # merged in from the base
        assert 'mmquant' not in sys.modules
        init_default_scope(cfg.default_scope)
        model = MODELS.build(cfg.model)
        assert type(model).__name__ == 'QuantizedModel'
        assert type(model).__module__ == 'mmquant.models.quantized_model'
        assert count(model) == n_layers, count(model)

        cfg = Config.fromfile({str(with_imports)!r})  # imports mmquant
        assert 'mmquant' in sys.modules
        model = MODELS.build(cfg.model)
        assert count(model) == n_layers, count(model)
        print('ok')
    """)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, timeout=300, env=_env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith('ok')


def test_quantized_model_rejects_stray_keys():
    from mmengine.registry import init_default_scope

    from mmquant.models import QuantizedModel
    init_default_scope('mmdet')
    arch = det_model('retinanet')
    # the base model's keys, merged in unchanged, are accepted
    QuantizedModel(architecture=arch, backbone=arch['backbone'],
                   train_cfg=arch['train_cfg'])
    # anything else is named, with the fix
    with pytest.raises(TypeError,
                       match=r"\['int_ckpt', 'neck'\].*_delete_=True"):
        QuantizedModel(architecture=arch, int_ckpt='x.pth',
                       neck=dict(arch['neck'], out_channels=8))
