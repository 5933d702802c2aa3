"""Run safety of ``tools/ptq.py`` and ``tools/test.py`` (issue 17).

* bad numbers are refused up front, on one line, with exit status 2;
* files, the config, its data sets and the work dir (writable, with room
  for the INT file) are checked before calibration starts, and a refused
  run leaves no folder behind;
* the INT checkpoint and the report are written before the evaluation; a
  failing evaluation keeps them and exits 1;
* the float checkpoint's sha256 is that of the bytes that were loaded,
  even when the file is replaced or deleted during the run;
* user errors print one line and exit 2 (``--debug`` / ``MMQUANT_DEBUG=1``
  show the traceback); NaN/Inf errors name the layer and the batch; the
  unknown-key hint of quantizers does not offer ``method``;
* every run writes into its own ``<work dir>/<timestamp>/`` folder with a
  ``latest`` pointer, so concurrent runs into one work dir do not collide.
"""
import errno
import hashlib
import importlib.util
import json
import re
import os
import os.path as osp
import subprocess
import sys
import tempfile

import pytest
import torch
from torch import nn

import mmquant
from mmquant.apis import ptq as ptq_api
from mmquant.apis.calibration import build_calib_dataloader
from mmquant.apis.ptq import PTQInputError, run_ptq
from mmquant.checkpoint import load_container
from mmquant.quantizers import BitSplitQuantizer

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PTQ = osp.join(ROOT, 'tools', 'ptq.py')
TEST = osp.join(ROOT, 'tools', 'test.py')


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONPATH=ROOT)
    env.pop('MMQUANT_DEBUG', None)
    env.update(extra)
    return env


def _tool():
    spec = importlib.util.spec_from_file_location(
        'mmquant_tools_ptq_safety', PTQ)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(ws, tmp_path, name='tiny_cls'):
    path = tmp_path / f'{name}.py'
    ws.cls_cfg('resnet').dump(str(path))
    return str(path)


def _run(args, cwd, **env):
    return subprocess.run([sys.executable] + args, capture_output=True,
                          text=True, timeout=300, env=_env(**env),
                          cwd=str(cwd))


def _one_line_error(out, *needles):
    """Exit 2, stderr is one ``error:`` line holding ``needles``."""
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-3000:]
    assert 'Traceback' not in out.stderr
    assert ': error: ' in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_calibration(monkeypatch):
    """Fail the test if calibration starts."""
    def forbidden(*args, **kwargs):
        raise AssertionError('calibration started')
    monkeypatch.setattr(ptq_api, 'preprocess_batches', forbidden)


# ------------------------------------------------------ 2. bad numbers --
@pytest.mark.parametrize('option,value', [
    ('--calib-samples', '-5'), ('--calib-samples', '0'),
    ('--calib-batch-size', '0'), ('--eval-samples', '-1'),
    ('--eval-samples', '0'), ('--calib-samples', 'many')])
def test_bad_numbers_refused_up_front(ws, tmp_path, option, value):
    config = _config(ws, tmp_path)
    work = tmp_path / 'work'
    out = _run([PTQ, config, ws.float_ckpt('resnet'), '--fast',
                '--work-dir', str(work), option, value], tmp_path)
    _one_line_error(out, f'argument {option}: must be a whole number >= 1',
                    repr(value))
    assert not work.exists()


@pytest.mark.parametrize('kwargs,needle', [
    (dict(calib_samples=-5), 'calib_samples (--calib-samples) must be'),
    (dict(calib_samples=0), 'calib_samples (--calib-samples) must be'),
    (dict(calib_samples=True), 'calib_samples (--calib-samples) must be'),
    (dict(calib_batch_size=0), 'calib_batch_size (--calib-batch-size)'),
    (dict(eval_samples=-1), 'use --no-eval'),
    (dict(eval_samples=0), 'use --no-eval')])
def test_run_ptq_refuses_bad_numbers(ws, tmp_path, no_calibration, kwargs,
                                     needle):
    work = tmp_path / 'work'
    with pytest.raises(PTQInputError, match='must be a whole number >= 1') \
            as info:
        run_ptq(ws.cls_cfg('resnet'), ws.float_ckpt('resnet'), str(work),
                **kwargs)
    assert needle in str(info.value)
    assert not work.exists()


def test_calib_dataloader_counts(ws):
    from mmengine.registry import DefaultScope
    dl_cfg = ws.cls_cfg('resnet').train_dataloader
    for kwargs in (dict(num_samples=-5), dict(num_samples=0),
                   dict(num_samples=4, batch_size=0)):
        with pytest.raises(ValueError, match='must be a whole number >= 1'):
            build_calib_dataloader(dl_cfg, **kwargs)
    # the config's datasets are mmpretrain's (run_ptq sets the scope)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        loader = build_calib_dataloader(dl_cfg, 5, batch_size=2)
    assert len(loader.dataset) == 5 and loader.batch_size == 2


# --------------------------------------- 1. validate first, save first --
def test_missing_test_set_refused_before_calibration(ws, tmp_path,
                                                     no_calibration):
    config = _config(ws, tmp_path)
    work = tmp_path / 'work'
    status = _tool().main([
        config, ws.float_ckpt('resnet'), '--fast', '--work-dir', str(work),
        '--cfg-options', 'test_dataloader.dataset.data_root=/nonexistent'])
    assert status == 2
    assert not work.exists()  # no empty work dir left behind


def test_missing_test_set_one_line(ws, tmp_path):
    config = _config(ws, tmp_path)
    out = _run([PTQ, config, ws.float_ckpt('resnet'), '--fast',
                '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                'test_dataloader.dataset.data_root=/nonexistent'], tmp_path)
    _one_line_error(out, 'cannot load the test dataset', "'/nonexistent'",
                    'data_root')
    assert not (tmp_path / 'work').exists()


def test_unwritable_work_dir_refused_before_calibration(
        ws, tmp_path, monkeypatch, no_calibration, capsys):
    config = _config(ws, tmp_path)
    tool = _tool()

    # a read-only file system (EROFS cannot be made here: tests run as
    # root, which ignores permission bits)
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, 'Read-only file system')
    monkeypatch.setattr(ptq_api.tempfile, 'mkstemp', read_only)
    work = tmp_path / 'ro' / 'work'
    assert tool.main([config, ws.float_ckpt('resnet'), '--work-dir',
                      str(work)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write to work dir '{work}': Read-only file system" \
        in err
    assert not (tmp_path / 'ro').exists()
    monkeypatch.setattr(ptq_api.tempfile, 'mkstemp', tempfile.mkstemp)
    # a file in the way
    (tmp_path / 'file').write_text('x')
    assert tool.main([config, ws.float_ckpt('resnet'), '--work-dir',
                      str(tmp_path / 'file' / 'work')]) == 2
    assert 'exists and is not a folder' in capsys.readouterr().err


def test_no_room_for_int_file_refused(ws, tmp_path, monkeypatch,
                                      no_calibration):
    usage = type('Usage', (), {'free': 10_000})
    monkeypatch.setattr(ptq_api.shutil, 'disk_usage', lambda path: usage)
    work = tmp_path / 'work'
    with pytest.raises(PTQInputError,
                       match='not enough free space in work dir') as info:
        run_ptq(ws.cls_cfg('resnet'), ws.float_ckpt('resnet'), str(work))
    # the estimate: 4-bit conv/linear weights, float everything else
    model = ptq_api.build_float_model(ws.cls_cfg('resnet'))
    need = ptq_api.estimate_int_bytes(model, 4)
    assert f'the INT checkpoint needs about {need:,}' in str(info.value)
    assert not work.exists()


def test_estimate_int_bytes():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8),
                          nn.Linear(8, 2))
    # 216 + 16 weights at 4 bits; biases 8 + 2, BN 4 x 8 floats, one int64
    assert ptq_api.estimate_int_bytes(model, 4) == \
        (64 << 10) + (216 * 4 + 7) // 8 + (16 * 4 + 7) // 8 + \
        4 * (8 + 2 + 4 * 8) + 8


def test_evaluation_failure_keeps_int_file(ws, tmp_path, monkeypatch,
                                           capsys):
    config = _config(ws, tmp_path)
    work = tmp_path / 'work'

    def broken(model, cfg, max_samples=None, dataset=None):
        raise ZeroDivisionError('division by zero')
    monkeypatch.setattr(ptq_api, 'evaluate', broken)
    status = _tool().main([config, ws.float_ckpt('resnet'), '--fast',
                           '--calib-samples', '8', '--work-dir', str(work)])
    assert status == 1
    run_dir = work / 'latest'
    int_path = run_dir / 'tiny_cls_w4a8_int.pth'
    report = json.loads((run_dir / 'report.json').read_text())
    assert report['extra']['evaluation'] == 'failed'
    assert report['extra']['evaluation_error'] == \
        'ZeroDivisionError: division by zero'
    assert report['extra']['int_checkpoint'] == str(
        work / os.readlink(run_dir) / 'tiny_cls_w4a8_int.pth')
    tensors, meta = load_container(str(int_path))  # complete and valid
    assert meta['mode'] == 'fast'
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        'ptq.py: error: evaluation failed (ZeroDivisionError: division by '
        'zero); the INT checkpoint ')
    assert 'are kept' in err[0] and 'tools/test.py' in err[0]
    log = (run_dir / f'ptq_{os.readlink(run_dir)}.log').read_text()
    errors = [line for line in log.splitlines() if ' - ERROR - ' in line]
    assert len(errors) == 1 and errors[0].endswith(
        'mmquant: ' + err[0][len('ptq.py: error: '):]), errors


def test_int_file_written_before_evaluation(ws, tmp_path, monkeypatch):
    seen = []

    def spy(model, cfg, max_samples=None, dataset=None):
        files = sorted(os.listdir(work))
        report = json.loads((work / 'report.json').read_text())
        seen.append((files, report['extra']['evaluation']))
        return {'accuracy/top1': 1.0}
    monkeypatch.setattr(ptq_api, 'evaluate', spy)
    work = tmp_path / 'work'
    report = run_ptq(ws.cls_cfg('resnet'), ws.float_ckpt('resnet'),
                     str(work), dict(error_compensation=False), 8)
    assert seen == [(['model_w4a8_int.pth', 'model_w4a8_quantized.py',
                      'report.json', 'report.png'], 'pending')] * 2
    assert report['extra']['evaluation'] == 'done'
    assert json.loads((work / 'report.json').read_text()) == report


# ------------------------------------------------------- 3. provenance --
@pytest.mark.parametrize('change', ['rotate', 'delete'])
def test_float_sha256_of_loaded_bytes(ws, tmp_path, monkeypatch, change):
    """The checkpoint is replaced (as CheckpointHook(max_keep_ckpts) does)
    or deleted once loaded: the recorded hash is still the loaded one."""
    ckpt = tmp_path / 'epoch_1.pth'
    data = open(ws.float_ckpt('resnet'), 'rb').read()
    ckpt.write_bytes(data)
    real = ptq_api.preprocess_batches

    def swap_then_preprocess(model, loader):
        if change == 'rotate':
            other = tmp_path / 'other.pth'
            torch.save(dict(state_dict={'x': torch.zeros(3)}), other)
            os.replace(other, ckpt)
        else:
            os.unlink(ckpt)
        return real(model, loader)
    monkeypatch.setattr(ptq_api, 'preprocess_batches',
                        swap_then_preprocess)
    report = run_ptq(ws.cls_cfg('resnet'), str(ckpt),
                     str(tmp_path / 'work'), dict(error_compensation=False),
                     8, do_eval=False)
    digest = hashlib.sha256(data).hexdigest()
    _, meta = load_container(report['extra']['int_checkpoint'])
    assert meta['float_checkpoint_sha256'] == digest
    assert meta['float_checkpoint'] == str(ckpt)
    assert report['extra']['float_checkpoint_sha256'] == digest
    assert report['extra']['float_checkpoint_bytes'] == len(data)


def test_read_float_checkpoint_refuses_non_files(tmp_path):
    with pytest.raises(PTQInputError, match='does not exist'):
        ptq_api.read_float_checkpoint(str(tmp_path / 'none.pth'))
    with pytest.raises(PTQInputError, match='is a folder'):
        ptq_api.read_float_checkpoint(str(tmp_path))
    fifo = tmp_path / 'fifo.pth'
    os.mkfifo(fifo)
    with pytest.raises(PTQInputError, match='is not a regular file'):
        ptq_api.read_float_checkpoint(str(fifo))


# ----------------------------------------------- 8. errors for people --
def test_user_errors_are_one_line(ws, tmp_path):
    config = _config(ws, tmp_path)
    ckpt = ws.float_ckpt('resnet')
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint')
    bad_cfg = tmp_path / 'bad_cfg.py'
    bad_cfg.write_text('model = dict(\n')
    cases = [
        ([PTQ, str(tmp_path / 'none.py'), ckpt],
         ["config '", "none.py' does not exist"]),
        ([PTQ, config, str(tmp_path / 'none.pth')],
         ["float checkpoint '", "none.pth' does not exist"]),
        ([PTQ, str(bad_cfg), ckpt], ['cannot read config', 'bad_cfg.py']),
        ([PTQ, config, str(garbage), '--work-dir', str(tmp_path / 'w')],
         [str(garbage), 'float checkpoint']),
        ([PTQ, config, ckpt, '--w-bits', '9', '--work-dir',
          str(tmp_path / 'w')], ['quantizer config: ', 'w_bits']),
        ([TEST, config, str(tmp_path / 'none.pth')],
         ["INT checkpoint '", "none.pth' does not exist"]),
        ([TEST, config, ckpt], ['is not an mmquant INT checkpoint']),
        ([TEST, str(bad_cfg), ckpt], ['cannot read config']),
        ([PTQ, config, ckpt, '--work-dir', str(tmp_path / 'w'),
          '--cfg-options', 'model.backbone.depth=19'],
         ['cannot build the model of the config', 'depth 19']),
        ([TEST, config, ws.ptq('resnet').int_path, '--work-dir',
          str(tmp_path / 'w'), '--cfg-options',
          'test_dataloader.dataset.data_root=/nonexistent'],
         ['cannot load the test dataset', "data_root='/nonexistent'"]),
    ]
    for args, needles in cases:
        out = _run(args, tmp_path)
        _one_line_error(out, *needles)
    assert sorted(os.listdir(tmp_path)) == [
        'bad_cfg.py', 'garbage.pth', 'tiny_cls.py']  # nothing left behind
    # --debug and MMQUANT_DEBUG=1 show the traceback
    args = [PTQ, config, str(tmp_path / 'none.pth')]
    for out in (_run(args + ['--debug'], tmp_path),
                _run(args, tmp_path, MMQUANT_DEBUG='1'),
                _run([TEST, config, str(tmp_path / 'none.pth'), '--debug'],
                     tmp_path)):
        assert out.returncode == 2
        assert 'Traceback (most recent call last)' in out.stderr
        assert out.stderr.strip().splitlines()[-1].endswith(
            "none.pth' does not exist; check the path")


def test_disk_full_at_save(ws, tmp_path, monkeypatch, capsys):
    config = _config(ws, tmp_path)
    work = tmp_path / 'work'
    for error, needle in (
            (OSError(errno.ENOSPC, 'No space left on device', 'x.pth'),
             "disk full 'x.pth'; free some space or choose another "
             '--work-dir'),
            (RuntimeError('[enforce fail at inline_container.cc:664] . '
                          'unexpected pos 64 vs 0'),
             'cannot write the INT checkpoint')):
        def full(*args, error=error):
            raise error
        monkeypatch.setattr(ptq_api, 'save_quantized', full)
        assert _tool().main([config, ws.float_ckpt('resnet'), '--fast',
                             '--calib-samples', '8', '--no-eval',
                             '--work-dir', str(work)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not work.exists()


def test_nan_error_names_layer_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    batches = [torch.randn(4, 8) for _ in range(3)]
    batches[1][2, 3] = float('nan')
    for ec in (False, True):
        with pytest.raises(ValueError) as info:
            mmquant.quantize(model, batches, mmquant.QuantConfig(
                w_bits=4, a_bits=8, error_compensation=ec))
        assert str(info.value) == (
            "layer '0', calibration batch 2/3: inputs contain NaN or Inf; "
            'cannot accumulate statistics (check the float checkpoint and '
            'the calibration data)')
    with pytest.raises(ValueError) as info:
        mmquant.quantize(model, batches, mmquant.QuantConfig(
            w_bits=4, a_bits=8, method='rtn'))
    assert str(info.value).startswith(
        "layer '2', calibration batch 2/3: activation contains NaN or Inf")


def test_unknown_key_hint_omits_method():
    with pytest.raises(ValueError) as info:
        BitSplitQuantizer(w_bits=4, methd='rtn')
    msg = str(info.value)
    assert msg.startswith("unknown quantizer config key(s): 'methd'; "
                          'valid keys: '), msg
    # no key 'method' (output_method is another key)
    assert 'method' not in re.findall(r'\w+', msg.replace("'methd'", ''))
    with pytest.raises(ValueError, match='fixes method'):
        BitSplitQuantizer(method='rtn')
    # the plain config still offers it
    with pytest.raises(ValueError, match="did you mean 'method'"):
        mmquant.QuantConfig.from_dict(dict(methd='rtn'))


# --------------------------------------------------- 9. no collisions --
def test_concurrent_runs_do_not_collide(ws, tmp_path):
    config = _config(ws, tmp_path)
    work = tmp_path / 'shared'
    procs = [subprocess.Popen(
        [sys.executable, PTQ, config, ws.float_ckpt('resnet'), '--fast',
         '--no-eval', '--calib-samples', '8', '--work-dir', str(work)]
        + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(), cwd=str(tmp_path))
        for extra in ([], ['--cfg-options', 'quantizer.seed=1'])]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [
        o[1][-2000:] for o in outs]
    runs = sorted(p for p in os.listdir(work) if p != 'latest')
    assert len(runs) == 2, runs
    seeds = set()
    for run in runs:
        folder = work / run
        assert sorted(os.listdir(folder)) == sorted([
            'tiny_cls_w4a8_int.pth', 'tiny_cls_w4a8_quantized.py',
            'report.json', 'report.png', 'tiny_cls.py', f'ptq_{run}.log'])
        report = json.loads((folder / 'report.json').read_text())
        int_path = str(folder / 'tiny_cls_w4a8_int.pth')
        assert report['extra']['int_checkpoint'] == int_path
        _, meta = load_container(int_path)
        assert meta['quantizer']['seed'] == report['config']['seed']
        seeds.add(report['config']['seed'])
    assert seeds == {0, 1}
    assert osp.islink(work / 'latest')
    assert os.readlink(work / 'latest') in runs


def test_run_dir_names_and_latest_pointer(tmp_path, monkeypatch):
    tool = _tool()
    first = tool.make_run_dir(str(tmp_path), '20240101_000000')
    second = tool.make_run_dir(str(tmp_path), '20240101_000000')
    assert [osp.basename(first), osp.basename(second)] == [
        '20240101_000000', '20240101_000000_1']
    link = tool.update_latest(str(tmp_path), first)
    assert os.readlink(link) == '20240101_000000'
    tool.update_latest(str(tmp_path), second)
    assert os.readlink(link) == '20240101_000000_1'

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, 'Operation not permitted')
    monkeypatch.setattr(tool.os, 'symlink', no_links)
    os.unlink(link)
    tool.update_latest(str(tmp_path), first)
    assert open(link).read() == '20240101_000000\n'
    assert sorted(os.listdir(tmp_path)) == [
        '20240101_000000', '20240101_000000_1', 'latest']


def test_prepare_work_dir_cleanup_and_races(tmp_path, monkeypatch):
    real_mkdir = os.mkdir

    def no_c(path, *args):
        if osp.basename(path) == 'c':
            raise PermissionError(errno.EACCES, 'Permission denied', path)
        real_mkdir(path, *args)
    monkeypatch.setattr(ptq_api.os, 'mkdir', no_c)
    with pytest.raises(PTQInputError, match=r"cannot write to work dir "
                       r"'.*/a/b/c': Permission denied; choose a writable"):
        ptq_api.prepare_work_dir(str(tmp_path / 'a' / 'b' / 'c'))
    assert os.listdir(tmp_path) == []  # a and a/b removed again

    def raced(path, *args):  # another run makes the folder first
        real_mkdir(path, *args)
        raise FileExistsError(errno.EEXIST, 'File exists', path)
    monkeypatch.setattr(ptq_api.os, 'mkdir', raced)
    assert ptq_api.prepare_work_dir(str(tmp_path / 'x' / 'y')) == []
    assert osp.isdir(tmp_path / 'x' / 'y')
    monkeypatch.setattr(ptq_api.os, 'mkdir', real_mkdir)
    work = str(tmp_path / 'p' / 'q')
    assert ptq_api.prepare_work_dir(work) == [
        work, str(tmp_path / 'p')]
    assert os.listdir(work) == []  # the probe file is gone
