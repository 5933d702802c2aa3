"""What ``tools/ptq.py`` writes and how stock OpenMMLab tools use it.

* output names: the bit tag is appended unless the config name has it;
* the work dir: ``--work-dir`` > ``cfg.work_dir`` (``--cfg-options``) >
  ``work_dirs/<config name>``; each run's own ``<timestamp>/`` folder
  there with a log file, the config as run, and the ``latest`` link; the
  summary table;
* the ready config ``<stem>_quantized.py``: mmpretrain's and mmdet's own
  ``tools/test.py`` run it as it is and reproduce the quantized metrics
  ``run_ptq`` reported, exactly;
* stock ``tools/test.py`` given the *float* config and the INT file: what
  happens (mmengine loads nothing, and the warning it prints names the
  ready config).
"""
import glob
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
from mmengine.config import Config

from mmquant.apis.ptq import bits_tag, output_stem, ready_config
from mmquant.checkpoint.int_model import int_file_notice

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _stock_test(package):
    spec = importlib.util.find_spec(package)
    return osp.join(osp.dirname(spec.origin), '.mim', 'tools', 'test.py')


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                PYTHONPATH=ROOT)


def _load_ptq_tool():
    spec = importlib.util.spec_from_file_location(
        'mmquant_tools_ptq', osp.join(ROOT, 'tools', 'ptq.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _json_metrics(work_dir):
    """The metrics mmengine's LoggerHook dumped after the test epoch."""
    files = glob.glob(osp.join(str(work_dir), '*', '*.json'))
    files = [f for f in files if osp.basename(osp.dirname(f)) ==
             osp.splitext(osp.basename(f))[0]]
    assert len(files) == 1, files
    with open(files[0]) as f:
        return json.loads(f.read().splitlines()[-1])


# ----------------------------------------------------------------- names --
@pytest.mark.parametrize('name,w,a,stem', [
    ('model', 4, 8, 'model_w4a8'),
    ('resnet18_8xb32_in1k', 4, 8, 'resnet18_8xb32_in1k_w4a8'),
    ('resnet18_w4a8_in1k', 4, 8, 'resnet18_w4a8_in1k'),
    ('resnet18_w4a8_in1k', 3, 8, 'resnet18_w4a8_in1k_w3a8'),
    ('retinanet_r50_fpn_w4a8_coco', 4, 8, 'retinanet_r50_fpn_w4a8_coco'),
    ('faster-rcnn_r50_fpn-W8A8-coco', 8, 8, 'faster-rcnn_r50_fpn-W8A8-coco'),
    ('net_w4a8', 4, 8, 'net_w4a8'),
    ('w4a8', 4, 8, 'w4a8'),
    ('net_w4a88', 4, 8, 'net_w4a88_w4a8'),  # w4a88 is another token
    ('xw4a8', 4, 8, 'xw4a8_w4a8'),
    ('net_w4af', 4, None, 'net_w4af'),
    ('net_w4a8', 4, None, 'net_w4a8_w4af'),
])
def test_output_stem(name, w, a, stem):
    assert output_stem(name, bits_tag(w, a)) == stem


@pytest.mark.parametrize('target,tag', [(3.5, 'w3.5mixa8'),
                                        (3.0, 'w3.0mixa8'),
                                        (3.25, 'w3.25mixa8')])
def test_mixed_precision_tag(target, tag):
    assert bits_tag(4, 8, target) == tag
    assert output_stem('net_w4a8', tag) == f'net_w4a8_{tag}'


@pytest.mark.parametrize('metric', [None, 'layer'])
def test_tools_ptq_target_bits(ws, tmp_path, metric):
    """--target-bits: the INT file is named after the target, the
    report has the allocation (by the network probe unless
    --allocation-metric says otherwise), the summary says mixed, and the
    figure has its sensitivity panel (three panels: 1500 px high)."""
    from mmquant.visualization import figure_size
    cfg = ws.cls_cfg('resnet')
    config = tmp_path / 'tiny.py'
    cfg.dump(str(config))
    out = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'ptq.py'), str(config),
         ws.float_ckpt('resnet'), '--calib-samples', '8', '--no-eval',
         '--target-bits', '3.5', '--work-dir', str(tmp_path / 'w')]
        + ([] if metric is None else ['--allocation-metric', metric]),
        capture_output=True, text=True, timeout=300, env=_env(),
        cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / 'w' / 'latest'
    assert (run / 'tiny_w3.5mixa8_int.pth').is_file()
    report = json.loads((run / 'report.json').read_text())
    mixed = report['extra']['mixed_precision']
    assert mixed['target_bits'] == 3.5 and mixed['average_bits'] <= 3.5
    assert mixed['metric'] == (metric or 'network')
    assert mixed['probe_samples'] == (None if metric else 8)
    assert report['config']['target_bits'] == 3.5
    widths = sorted({*mixed['bits'].values(), *mixed['fixed'].values()})
    assert (f"mixed W{'/'.join(map(str, widths))}, "
            f"{mixed['average_bits']:.3f} bits per weight (target 3.5)"
            in out.stdout)
    with open(run / 'report.png', 'rb') as f:
        head = f.read(24)
    assert int.from_bytes(head[20:24], 'big') == figure_size(report)[1] \
        == 1500


def test_resolve_work_dir_precedence():
    tool = _load_ptq_tool()
    cfg = Config(dict(model=dict(type='X')))
    assert tool.resolve_work_dir(cfg, None, 'a/b/my_cfg.py') == \
        osp.join('work_dirs', 'my_cfg')
    cfg.merge_from_dict(dict(work_dir='from_cfg'))  # as --cfg-options
    assert tool.resolve_work_dir(cfg, None, 'a/b/my_cfg.py') == 'from_cfg'
    assert tool.resolve_work_dir(cfg, 'from_cli', 'a/b/my_cfg.py') == \
        'from_cli'


def test_ready_config_contents(ws):
    cfg = ws.cls_cfg('resnet')
    # the preprocessor only at the top level, as mmpretrain configs have it
    cfg.data_preprocessor = cfg.model.pop('data_preprocessor')
    cfg.work_dir = '/somewhere'
    cfg.resume = True
    ready = ready_config(cfg, 'x_int.pth')
    assert ready.model.type == 'mmquant.QuantizedModel'
    assert ready.model.int_checkpoint == '{{ fileDirname }}/x_int.pth'
    assert ready.load_from == '{{ fileDirname }}/x_int.pth'
    arch = ready.model.architecture
    assert arch.type == 'ImageClassifier'
    assert arch.data_preprocessor == cfg.data_preprocessor
    assert ready.custom_imports.imports == ['mmquant']
    assert 'work_dir' not in ready and ready.resume is False
    assert ready.test_evaluator == cfg.test_evaluator
    with pytest.raises(ValueError, match='bare file name'):
        ready_config(cfg, 'dir/x_int.pth')


# ---------------------------------------------------------- tools/ptq.py --
def test_tools_ptq_outputs(ws, tmp_path):
    """A config name with the run's tag, ``work_dir`` from
    ``--cfg-options``: every output lands there, named once."""
    cfg = ws.cls_cfg('resnet')
    config = tmp_path / 'tiny_w4a8_cls.py'
    cfg.dump(str(config))
    work = tmp_path / 'from_cfg_options'
    out = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'ptq.py'), str(config),
         ws.float_ckpt('resnet'), '--fast', '--calib-samples', '8',
         '--cfg-options', f'work_dir={work}'],
        capture_output=True, text=True, timeout=300, env=_env(),
        cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (tmp_path / 'work_dirs').exists()
    # one timestamped run folder and the `latest` link to it
    runs = [p.name for p in work.iterdir() if p.name != 'latest']
    assert len(runs) == 1 and re.fullmatch(r'\d{8}_\d{6}', runs[0]), runs
    assert os.readlink(work / 'latest') == runs[0]
    top = work
    work = top / runs[0]
    logs = sorted(p.name for p in work.glob('ptq_*.log'))
    assert logs == [f'ptq_{runs[0]}.log'], logs
    assert sorted(p.name for p in work.iterdir()) == sorted([
        'tiny_w4a8_cls_int.pth', 'tiny_w4a8_cls_quantized.py',
        'report.json', 'report.png', 'tiny_w4a8_cls.py', logs[0]])
    dumped = Config.fromfile(str(work / 'tiny_w4a8_cls.py'))
    assert dumped.work_dir == str(top)
    assert dumped.model == cfg.model
    report = json.loads((work / 'report.json').read_text())
    extra = report['extra']
    assert extra['int_checkpoint'] == str(work / 'tiny_w4a8_cls_int.pth')
    assert extra['ready_config'] == str(work / 'tiny_w4a8_cls_quantized.py')
    assert extra['float_checkpoint_bytes'] == osp.getsize(
        ws.float_ckpt('resnet'))
    # the summary table, in the log file and on the console
    log = (work / logs[0]).read_text()
    table = [line for line in log.splitlines() if line[:1] in '|+']
    assert table and '\n'.join(table) in out.stdout  # also on the console
    rows = [[c.strip() for c in line.strip()[1:-1].split(' | ')]
            for line in log.splitlines() if line.startswith('| ')]
    info = {r[0]: r[1] for r in rows if len(r) == 2}
    int_bytes = extra['sizes']['file_bytes']
    float_bytes = extra['float_checkpoint_bytes']
    timing = report['timing']
    assert info == {
        'model': 'tiny_w4a8_cls',
        'quantizer': 'BitSplitQuantizer, W4 (weights), A8 (activations)',
        'mode': 'fast',
        'layers': '21 quantized, 0 float',
        'calibration': '8 samples',
        'INT checkpoint': extra['int_checkpoint'],
        'INT size': f'{int_bytes:,} bytes ({int_bytes / 2**20:.2f} MiB)',
        'compression': f'{float_bytes / int_bytes:.2f}x (float checkpoint '
        f'file: {float_bytes:,} bytes ({float_bytes / 2**20:.2f} MiB))',
        'ready config': extra['ready_config'],
        'report': str(work / 'report.json'),
        'time: checks': f'{timing["checks"]:.1f} s',
        'time: calibration data': f'{timing["calibration_data"]:.1f} s',
        'time: quantization': f'{timing["total"]:.1f} s (' + ', '.join(
            f'{k} {timing[k]:.1f} s' for k in
            ('forward', 'statistics', 'solver', 'activations', 'bn')) + ')',
        'time: evaluation': f'{timing["evaluation"]:.1f} s',
    }
    metrics = extra['metrics']
    assert [r for r in rows if len(r) == 4] == [
        ['metric', 'float', 'quantized', 'change']] + [
        [k, f'{f:.4f}', f'{metrics["quantized"][k]:.4f}',
         f'{metrics["quantized"][k] - f:+.4f}']
        for k, f in metrics['float'].items()]
    assert "{'forward'" not in log  # no raw timing dict


# ------------------------------------------- stock tools/test.py, ready --
@pytest.mark.parametrize('kind,package', [('resnet', 'mmpretrain'),
                                          ('retinanet', 'mmdet')])
def test_stock_test_runs_ready_config(ws, tmp_path, kind, package):
    """``<package>/tools/test.py <stem>_quantized.py <stem>_int.pth`` from
    another folder reproduces ``run_ptq``'s quantized metrics exactly."""
    script = _stock_test(package)
    if not osp.isfile(script):
        pytest.skip(f'{script} is not installed')
    run = ws.ptq(kind, calib_samples=16 if kind == 'resnet' else 8,
                 **({} if kind == 'resnet' else dict(
                     error_compensation=True)))
    ready = run.report['extra']['ready_config']
    assert osp.dirname(ready) == osp.dirname(run.int_path)
    assert osp.basename(ready) == 'model_w4a8_quantized.py'
    # the folder moves: the config finds the INT file next to it
    moved = tmp_path / 'moved'
    moved.mkdir()
    for path in (ready, run.int_path):
        os.link(path, moved / osp.basename(path))
    work = tmp_path / 'work'
    out = subprocess.run(
        [sys.executable, script, str(moved / osp.basename(ready)),
         str(moved / osp.basename(run.int_path)), '--work-dir', str(work)],
        capture_output=True, text=True, timeout=300, env=_env(),
        cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    expected = run.metrics['quantized']
    got = _json_metrics(work)
    assert {k: got[k] for k in expected} == expected


# ---------------------------------------- stock tools/test.py, float cfg --
def test_stock_test_float_config_names_ready_config(ws, tmp_path):
    """Stock mmpretrain ``tools/test.py FLOAT_CONFIG INT_FILE``: mmengine's
    runner cannot be made to fail from the file's data (see
    docs/openmmlab.md section 5), so it loads nothing, evaluates the
    randomly initialised model and exits 0; the warning it prints names
    the ready config."""
    script = _stock_test('mmpretrain')
    if not osp.isfile(script):
        pytest.skip(f'{script} is not installed')
    run = ws.ptq('resnet', calib_samples=16)
    config = tmp_path / 'float_cfg.py'
    run.cfg.dump(str(config))
    out = subprocess.run(
        [sys.executable, script, str(config), run.int_path, '--work-dir',
         str(tmp_path / 'work')],
        capture_output=True, text=True, timeout=300, env=_env(),
        cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    notice = int_file_notice(run.int_path)
    assert 'tools/test.py model_w4a8_quantized.py model_w4a8_int.pth' in \
        notice
    assert ('unexpected key in source state_dict: NOTICE: '
            f'{notice}, format, format_version') in text, text[-3000:]
    assert 'missing keys in source state_dict: backbone.conv1.weight' \
        in text


def test_switching_method_drops_the_other_methods_options():
    """``--method rtn`` (or a benchmark's RTN column) over a config whose
    quantizer sets BitSplit's options: those options are dropped (they
    were written for BitSplit); the same key given with the switch is
    refused by name."""
    from mmquant.apis.ptq import build_quantizer
    from mmquant.quantizers import PTQQuantizer, RTNQuantizer
    cfg = Config(dict(quantizer=dict(
        type='mmquant.BitSplitQuantizer', w_bits=3, max_rounds=20,
        schedule='paper', rows_per_layer=512)))
    q = build_quantizer(cfg, dict(type='mmquant.RTNQuantizer'))
    assert isinstance(q, RTNQuantizer)
    assert (q.config.w_bits, q.config.rows_per_layer) == (3, 512)
    assert (q.config.max_rounds, q.config.schedule) == (100, 'integer')
    q = build_quantizer(cfg, dict(type='mmquant.PTQQuantizer', method='rtn'))
    assert isinstance(q, PTQQuantizer) and q.config.method == 'rtn'
    with pytest.raises(ValueError, match="'damping' \\(an option of method "
                       "'bitsplit'\\)"):
        build_quantizer(cfg, dict(type='mmquant.RTNQuantizer', damping=0.0))
    # no switch: the config's own options are kept
    q = build_quantizer(cfg, dict(w_bits=4))
    assert (q.config.max_rounds, q.config.schedule) == (20, 'paper')
