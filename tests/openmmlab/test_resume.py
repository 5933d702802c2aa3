"""``tools/ptq.py --resume`` (issue 17): a killed run, restarted with
``--resume``, writes an INT checkpoint byte-identical to an uninterrupted
run; resume refuses other inputs.

Kills are simulated with the journal's test hooks
(``MMQUANT_TEST_EXIT_AFTER_LAYERS``, ``MMQUANT_TEST_EXIT_IN_JOURNAL_WRITE``,
see :mod:`mmquant.quantization.journal`), which end the process with
``os._exit`` like a SIGKILL would: no cleanup runs.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from mmquant.quantization.journal import (FINGERPRINT, TEST_EXIT_STATUS,
                                          JournalError, LayerJournal,
                                          calibration_sha256,
                                          run_fingerprint)
from mmquant.quantization.report import LayerReport

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PTQ = osp.join(ROOT, 'tools', 'ptq.py')
INT = 'tiny_cls_w4a8_int.pth'


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONPATH=ROOT)
    for var in ('MMQUANT_DEBUG', 'MMQUANT_TEST_EXIT_AFTER_LAYERS',
                'MMQUANT_TEST_EXIT_IN_JOURNAL_WRITE'):
        env.pop(var, None)
    env.update(extra)
    return env


def _config(ws, tmp_path):
    path = tmp_path / 'tiny_cls.py'
    if not path.exists():
        ws.cls_cfg('resnet').dump(str(path))
    return str(path)


def _ptq(ws, tmp_path, work, *extra, ckpt=None, **env):
    args = [sys.executable, PTQ, _config(ws, tmp_path),
            ckpt or ws.float_ckpt('resnet'), '--no-eval',
            '--calib-samples', '8', '--work-dir', str(work)] + list(extra)
    return subprocess.run(args, capture_output=True, text=True,
                          timeout=600, env=_env(**env), cwd=str(tmp_path))


def _runs(work):
    return sorted(n for n in os.listdir(work) if n != 'latest')


def _layer_files(run_dir):
    return sorted(n for n in os.listdir(osp.join(run_dir, 'resume'))
                  if n.startswith('layer_'))


def _killed(out):
    assert out.returncode == TEST_EXIT_STATUS, (out.returncode,
                                                out.stderr[-3000:])


def _ok(out):
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])


def _one_line_error(out, *needles):
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in out.stderr, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize('mode', ['fast', 'ec'])
def test_killed_runs_resume_byte_identical(ws, tmp_path, mode):
    """Kill after 1 layer, resume and kill again after 2 more layers,
    resume to the end: same INT bytes as an uninterrupted run in the same
    work dir; the finished folder holds no journal."""
    work = tmp_path / 'work'
    flags = ['--fast'] if mode == 'fast' else []
    _ok(_ptq(ws, tmp_path, work, *flags))
    (ref_run, ) = _runs(work)
    reference = (work / ref_run / INT).read_bytes()
    ref_report = json.loads((work / ref_run / 'report.json').read_text())
    n_layers = ref_report['summary']['quantized_layers']
    assert n_layers > 3

    _killed(_ptq(ws, tmp_path, work, *flags,
                 MMQUANT_TEST_EXIT_AFTER_LAYERS='1'))
    killed = (set(_runs(work)) - {ref_run}).pop()
    run_dir = str(work / killed)
    assert len(_layer_files(run_dir)) == 1
    assert not osp.exists(osp.join(run_dir, INT))
    assert os.readlink(work / 'latest') == ref_run  # not finished

    # a bare --resume picks the newest folder holding a journal
    _killed(_ptq(ws, tmp_path, work, *flags, '--resume',
                 MMQUANT_TEST_EXIT_AFTER_LAYERS='2'))
    assert len(_layer_files(run_dir)) == 3
    assert _runs(work) == sorted([ref_run, killed])

    _ok(_ptq(ws, tmp_path, work, *flags, '--resume'))
    assert _runs(work) == sorted([ref_run, killed])
    assert (work / killed / INT).read_bytes() == reference
    assert not osp.exists(osp.join(run_dir, 'resume'))
    assert os.readlink(work / 'latest') == killed
    report = json.loads((work / killed / 'report.json').read_text())
    assert report['extra']['resumed_layers'] == 3
    for got, want in zip(report['layers'], ref_report['layers']):
        for key in ('name', 'w_bits', 'a_bits', 'act_scale', 'rows',
                    'objective', 'rel_error', 'rounds'):
            assert got[key] == want[key], (got['name'], key)


def test_kill_during_journal_write_then_resume(ws, tmp_path):
    """A kill in the middle of the 3rd layer file leaves 2 complete layer
    files and a stray temporary file; resume ignores it and finishes
    with the uninterrupted run's bytes (error-compensated mode). The work
    dir is given relative to the current folder, the run folder to
    resume as an absolute path."""
    work = tmp_path / 'work'
    _ok(_ptq(ws, tmp_path, 'work'))
    (ref_run, ) = _runs(work)
    reference = (work / ref_run / INT).read_bytes()
    _killed(_ptq(ws, tmp_path, 'work',
                 MMQUANT_TEST_EXIT_IN_JOURNAL_WRITE='3'))
    killed = (set(_runs(work)) - {ref_run}).pop()
    journal = work / killed / 'resume'
    assert len(_layer_files(str(work / killed))) == 2
    stray = [n for n in os.listdir(journal) if n.endswith('.tmp')]
    assert len(stray) == 1 and stray[0].startswith('.layer_')
    for name in _layer_files(str(work / killed)):
        torch.load(journal / name, weights_only=True)  # complete files
    _ok(_ptq(ws, tmp_path, 'work', '--resume', str(work / killed)))
    assert (work / killed / INT).read_bytes() == reference


def test_resume_refuses_other_inputs(ws, tmp_path):
    work = tmp_path / 'work'
    _killed(_ptq(ws, tmp_path, work, '--fast',
                 MMQUANT_TEST_EXIT_AFTER_LAYERS='2'))
    (run, ) = _runs(work)
    journal = work / run / 'resume'
    before = {n: (journal / n).read_bytes() for n in os.listdir(journal)}
    run_files = sorted(os.listdir(work / run))

    other_ckpt = tmp_path / 'other.pth'
    state = torch.load(ws.float_ckpt('resnet'), map_location='cpu',
                       weights_only=False)
    sd = state.get('state_dict', state)
    key = next(k for k, v in sd.items() if v.is_floating_point())
    sd[key] = sd[key] + 1e-3
    torch.save(state, str(other_ckpt))
    cases = [
        ((['--cfg-options', 'unrelated_key=1'], {}), 'the config (as run)'),
        ((['--w-bits', '3'], {}), 'the quantizer settings'),
        (([], dict(ckpt=str(other_ckpt))), 'the float checkpoint'),
        ((['--calib-samples', '4'], {}), 'the calibration set'),
        ((['--calib-batch-size', '3'], {}), 'the calibration set'),
    ]
    for (extra, kwargs), needle in cases:
        out = _ptq(ws, tmp_path, work, '--fast', '--resume', *extra,
                   **kwargs)
        line = _one_line_error(out, 'cannot resume', needle,
                               'differ(s) from the interrupted run')
        assert 'the float checkpoint' not in line or needle == \
            'the float checkpoint', line
        # nothing changed in the interrupted run's folder
        assert {n: (journal / n).read_bytes()
                for n in os.listdir(journal)} == before
        assert sorted(n for n in os.listdir(work / run)
                      if '_resume_' not in n) == run_files
    assert _runs(work) == [run]
    # refusing left the journal usable
    _ok(_ptq(ws, tmp_path, work, '--fast', '--resume'))
    assert (work / run / INT).exists()


def test_resume_without_interrupted_run(ws, tmp_path):
    work = tmp_path / 'work'
    out = _ptq(ws, tmp_path, work, '--fast', '--resume')
    _one_line_error(out, '--resume', 'has no interrupted run')
    assert not work.exists()
    _ok(_ptq(ws, tmp_path, work, '--fast'))
    (run, ) = _runs(work)
    out = _ptq(ws, tmp_path, work, '--fast', '--resume', str(work / run))
    _one_line_error(out, 'cannot resume', 'it finished')
    out = _ptq(ws, tmp_path, work, '--fast', '--resume',
               str(work / 'nope'))
    _one_line_error(out, "/nope'", 'does not exist')


# ------------------------------------------------- the journal on its own --
def _fingerprint(**change):
    args = dict(config_text='model = 1\n', quantizer=dict(w_bits=4),
                float_checkpoint_sha256='ab' * 32, calibration='cd' * 32,
                calib_samples=8, calib_batch_size=None)
    args.update(change)
    return run_fingerprint(**args)


def test_journal_round_trip_and_refusals(tmp_path):
    root = str(tmp_path / 'resume')
    journal = LayerJournal(root, _fingerprint())
    qweight = torch.tensor([[[[-8]], [[7]]]], dtype=torch.int8)
    scale = torch.tensor([0.25])
    rep = LayerReport(name='a.b', type='Conv2d', rows=12, objective=1.5,
                      rel_error=0.125, rounds=3, sensitivity={'4': 0.5})
    journal.record('a.b', qweight, scale, (0.5, True), 4, rep)
    journal.record('c', qweight, scale, None, 4, LayerReport('c', 'Linear'))
    with pytest.raises(JournalError, match='already holds a resume'):
        LayerJournal(root, _fingerprint())

    again = LayerJournal(root, _fingerprint(), resume=True)
    assert sorted(again.entries) == ['a.b', 'c']
    entry = again.get('a.b')
    assert torch.equal(entry.qweight, qweight)
    assert entry.qweight.dtype == torch.int8
    assert torch.equal(entry.scale, scale)
    assert entry.act == (0.5, True) and again.get('c').act is None
    assert again.get('missing') is None
    assert again.restored == ['a.b', 'c']
    out = LayerReport(name='a.b', type='Conv2d')
    entry.apply_report(out)
    assert (out.rows, out.objective, out.rel_error, out.rounds,
            out.sensitivity) == (12, 1.5, 0.125, 3, {'4': 0.5})

    for change, needle in ((dict(config_text='model = 2\n'),
                            'the config'),
                           (dict(calibration='ef' * 32),
                            'the calibration set'),
                           (dict(float_checkpoint_sha256=None),
                            'the float checkpoint')):
        with pytest.raises(JournalError, match=needle):
            LayerJournal(root, _fingerprint(**change), resume=True)
    with pytest.raises(JournalError, match=f'has no {FINGERPRINT}'):
        LayerJournal(str(tmp_path / 'none'), _fingerprint(), resume=True)
    bad = os.path.join(root, sorted(
        n for n in os.listdir(root) if n.startswith('layer_'))[0])
    with open(bad, 'r+b') as f:
        f.truncate(10)
    with pytest.raises(JournalError, match='is unreadable'):
        LayerJournal(root, _fingerprint(), resume=True)


def test_calibration_sha256_sees_values_shapes_and_metainfo():
    class Sample:
        def __init__(self, shape):
            self.metainfo = dict(img_shape=shape)

    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    base = calibration_sha256([dict(inputs=x, data_samples=[Sample(1)])])
    assert base == calibration_sha256(
        [dict(inputs=x.clone(), data_samples=[Sample(1)])])
    y = x.clone()
    y[1, 2] = 5.000001
    for other in ([dict(inputs=y, data_samples=[Sample(1)])],
                  [dict(inputs=x.reshape(3, 2), data_samples=[Sample(1)])],
                  [dict(inputs=x.double(), data_samples=[Sample(1)])],
                  [dict(inputs=x, data_samples=[Sample(2)])],
                  [dict(inputs=x, data_samples=[Sample(1)])] * 2):
        assert calibration_sha256(other) != base


@pytest.mark.parametrize('ec,mixed', [(False, False), (True, False),
                                      (True, True)])
def test_quantize_with_partial_journal_is_identical(tmp_path, monkeypatch,
                                                    ec, mixed):
    """``mmquant.quantize(journal=)``: with 2 of 4 layers journaled, only
    the other 2 are solved (with ``target_bits``: in the final run; the
    sensitivity pass is not journaled) and every tensor of the result
    equals the uninterrupted run's."""
    import mmquant
    from mmquant.quantization.methods import bitsplit
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 16),
        torch.nn.ReLU(), torch.nn.Linear(16, 4))
    batches = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    config = dict(w_bits=4, a_bits=8, error_compensation=ec,
                  rows_per_layer=64, act_samples=100)
    if mixed:
        config['target_bits'] = 3.5
    root = str(tmp_path / 'resume')
    journal = LayerJournal(root, _fingerprint())
    full, report = mmquant.quantize(model, batches, config, journal=journal,
                                    logger=lambda msg: None)
    assert journal.written == 4 and journal.restored == []
    files = sorted(n for n in os.listdir(root) if n.startswith('layer_'))
    for name in ('2', '7'):  # the 2nd and the 4th layer are lost
        os.unlink(os.path.join(root, next(
            f for f in files if f.startswith(f'layer_{name}_'))))
    solved = []
    real = bitsplit.solve_layer

    def spy(weight, *args, **kwargs):
        solved.append(tuple(weight.shape))
        return real(weight, *args, **kwargs)
    monkeypatch.setattr(bitsplit, 'solve_layer', spy)
    again = LayerJournal(root, _fingerprint(), resume=True)
    resumed, report2 = mmquant.quantize(model, batches, config,
                                        journal=again,
                                        logger=lambda msg: None)
    assert sorted(again.restored) == ['0', '5']
    if mixed:  # the sensitivity pass solves every layer at every width
        probe = len(solved) - 2
        assert probe > 4 and solved[:probe].count((4, 16)) > 1
        solved = solved[probe:]
    assert solved == [(8, 8, 3, 3), (4, 16)]
    want, got = full.state_dict(), resumed.state_dict()
    assert sorted(want) == sorted(got)
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert [r.rel_error for r in report2.layers] == [
        r.rel_error for r in report.layers]
