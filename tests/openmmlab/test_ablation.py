"""The ablation runs of tools/analysis_tools/benchmark_ablation.py.

* one run over a tiny classifier: each row's metric is that of the
  quantizer the variant describes, run and evaluated separately;
* ``resume`` re-uses rows; ``baseline`` takes the float and default rows
  of a benchmark's results and refuses other sample counts;
* the Markdown (bold best per row, ``-`` for missing runs, mean change vs
  the first variant) and the validation of ablation lists.
"""
import os.path as osp

import pytest
from mmengine.config import Config

from mmquant.apis import benchmark as bm
from mmquant.apis.benchmark import ablation
from mmquant.apis.evaluation import evaluate
from mmquant.apis.ptq import (build_float_model, build_quantizer,
                              prepare_calibration)

VARIANTS = [bm.Variant('default'),
            bm.Variant('ridge-0', dict(damping=0.0), 'no ridge'),
            bm.Variant('out-rtn', dict(output_method='rtn'))]


@pytest.fixture(scope='module')
def abl(ws, tmp_path_factory):
    folder = tmp_path_factory.mktemp('ablation')
    config = osp.join(str(folder), 'tiny_resnet.py')
    ws.cls_cfg('resnet').dump(config)
    model = bm.BenchmarkModel(name='Tiny ResNet', config=config,
                              checkpoint=ws.float_ckpt('resnet'))
    work_dir = str(folder / 'work')
    rows = bm.run_ablation([model], VARIANTS, ['bitsplit-fast'], ['w2a8'],
                           work_dir, calib_samples=12)
    return model, work_dir, rows


def test_rows_are_the_variants_runs(abl):
    model, work_dir, rows = abl
    assert [r.key for r in rows] == [
        ('Tiny ResNet', 'float', 'float', 'fp32')] + [
        ('Tiny ResNet', v.name, 'bitsplit-fast', 'w2a8') for v in VARIANTS]
    cfg = Config.fromfile(model.config)
    float_model = build_float_model(cfg, model.checkpoint)
    assert rows[0].metrics == pytest.approx(evaluate(float_model, cfg))
    # the 'ridge-0' row is the quantizer with damping=0, run on its own
    batches, forward_fn = prepare_calibration(
        float_model, cfg, 12, build_quantizer(cfg).config.seed)
    quantizer = build_quantizer(cfg, dict(
        error_compensation=False, w_bits=2, a_bits=8, damping=0.0))
    qmodel, _ = quantizer.quantize(float_model, batches, forward_fn)
    assert rows[2].metrics == pytest.approx(evaluate(qmodel, cfg))
    assert all(r.ptq_seconds > 0 for r in rows[1:])
    saved, info = bm.load_ablation(osp.join(work_dir, 'ablation.json'))
    assert saved == rows
    assert info['calib_samples'] == 12 and info['bits'] == ['w2a8']
    assert [v['name'] for v in info['variants']] == [
        'default', 'ridge-0', 'out-rtn']


def test_resume_skips_finished_runs(abl, monkeypatch):
    model, work_dir, rows = abl

    def no_run(*args, **kwargs):
        raise AssertionError('a finished run was run again')

    monkeypatch.setattr(ablation, 'build_float_model', no_run)
    again = bm.run_ablation([model], VARIANTS, ['bitsplit-fast'], ['w2a8'],
                            work_dir, calib_samples=12, resume=True)
    assert again == rows
    with pytest.raises(ValueError, match='calib_samples=12, this run 13'):
        bm.run_ablation([model], VARIANTS, ['bitsplit-fast'], ['w2a8'],
                        work_dir, calib_samples=13, resume=True)


def _row(model, method, bits, top1, task='Image Classification'):
    return bm.BenchmarkRow(model=model, config='c.py', task=task,
                           dataset='d', method=method, bits=bits,
                           metrics={'accuracy/top1': top1}, params=1,
                           flops=1, file_bytes=1, ptq_seconds=1.0)


def test_baseline_takes_float_and_default_rows(tmp_path):
    path = str(tmp_path / 'results.json')
    bm.save_results(path, [
        _row('M', 'float', 'fp32', 90.0), _row('M', 'rtn', 'w4a8', 80.0),
        _row('M', 'bitsplit', 'w4a8', 89.0),
        _row('M', 'bitsplit', 'w8a8', 89.5)],
        dict(calib_samples=256, eval_samples=None))
    rows = bm.baseline_rows(path, 'default', ['bitsplit'], ['w4a8'], 256,
                            None)
    assert [r.key for r in rows] == [('M', 'float', 'float', 'fp32'),
                                     ('M', 'default', 'bitsplit', 'w4a8')]
    assert rows[1].metrics == {'accuracy/top1': 89.0}
    assert all(r.extra['source'] == path for r in rows)
    with pytest.raises(ValueError, match='calib_samples=256, the ablation '
                       'uses 128'):
        bm.baseline_rows(path, 'default', ['bitsplit'], ['w4a8'], 128,
                         None)


def _arow(variant, mode, bits, top1):
    return bm.AblationRow(model='M', task='Image Classification',
                          variant=variant, mode=mode, bits=bits,
                          metrics={'accuracy/top1': top1})


def test_render_marks_the_best_and_averages_the_changes():
    rows = [_arow('float', 'float', 'fp32', 90.0),
            _arow('default', 'bitsplit', 'w4a8', 88.0),
            _arow('ridge-0', 'bitsplit', 'w4a8', 88.5),
            _arow('out-rtn', 'bitsplit', 'w4a8', 87.0),
            _arow('default', 'bitsplit', 'w2a8', 70.0),
            _arow('ridge-0', 'bitsplit', 'w2a8', 60.0)]
    info = dict(modes=['bitsplit'], bits=['w2a8', 'w4a8'], calib_samples=8,
                sessions=[dict(command='cmd', machine='box')])
    text = bm.render_ablation(rows, VARIANTS, info)
    lines = text.splitlines()
    assert lines[0] == ('Measured on: box. Commands: `cmd`. 8 calibration '
                        'images, evaluated on the full test set.')
    assert '| `ridge-0` | `damping=0.0`; no ridge |' in lines
    assert '**M**, Top-1 (%) (float: 90.00)' in lines
    # W4A8 before W2A8; the best of each row in bold; a missing run is -
    assert ('| BitSplit (EC) | W4A8 | 88.00 | **88.50** | 87.00 |'
            in lines)
    assert '| BitSplit (EC) | W2A8 | **70.00** | 60.00 | - |' in lines
    assert lines.index('| BitSplit (EC) | W4A8 | 88.00 | **88.50** | '
                       '87.00 |') < lines.index(
        '| BitSplit (EC) | W2A8 | **70.00** | 60.00 | - |')
    # mean change vs the first variant: (0.5 - 10) / 2 and -1 / 1
    assert lines[-1] == ('| BitSplit (EC) | +0.00 (2) | -4.75 (2) | '
                         '-1.00 (1) |')


@pytest.mark.parametrize('variants, match', [
    ([], 'needs a non-empty `variants` list'),
    ([dict(name='a'), dict(name='a')], 'must be unique'),
    ([dict(name='float')], 'must be unique and not "float"'),
    ([dict(name='a', quantizer=dict(dampin=0.0))],
     "'dampin' \\(did you mean 'damping'"),
    ([dict(name='a', quantizer=dict(damping=-1.0))],
     'damping must be a number >= 0'),
    ([dict(name='a', settings=dict())], 'needs a name and only'),
])
def test_bad_variants(variants, match):
    cfg = Config(dict(variants=variants))
    with pytest.raises(ValueError, match=match):
        bm.load_variants(cfg)


def test_merge_refuses_other_sample_counts(tmp_path):
    a, b = str(tmp_path / 'a.json'), str(tmp_path / 'b.json')
    bm.save_ablation(a, [_arow('default', 'bitsplit', 'w4a8', 1.0)],
                     dict(calib_samples=8, sessions=[dict(command='x')],
                          modes=['bitsplit'], bits=['w4a8']))
    bm.save_ablation(b, [_arow('ridge-0', 'bitsplit', 'w4a8', 2.0)],
                     dict(calib_samples=8, sessions=[dict(command='y')],
                          modes=['bitsplit-fast', 'bitsplit'],
                          bits=['w4a8', 'w2a8']))
    rows, info = bm.merge_ablations([a, b])
    assert [r.variant for r in rows] == ['default', 'ridge-0']
    assert [s['command'] for s in info['sessions']] == ['x', 'y']
    # a part that ran one mode or width does not hide the others
    assert info['modes'] == ['bitsplit', 'bitsplit-fast']
    assert info['bits'] == ['w4a8', 'w2a8']
    bm.save_ablation(b, [], dict(calib_samples=9))
    with pytest.raises(ValueError, match='calib_samples=9, the others'):
        bm.merge_ablations([a, b])
