"""The engine of tools/analysis_tools/benchmark.py (mmquant.apis.benchmark).

* one run over a tiny classifier with two methods: every row's metrics are
  those of the model it wrote (the INT file reloads to the same metric),
  file sizes are the files', float metrics those of ``evaluate``;
* ``resume`` re-uses rows instead of running again;
* Markdown, README section replacement and metafile contents;
* MAC counting, bit tags, data-root rewriting and bad benchmark lists;
* metrics as JSON values, the package's floors and tools that import
  only the installed package.
"""
import ast
import os
import os.path as osp

import numpy as np
import pytest
import torch
import yaml
from mmengine.config import Config
from torch import nn

from mmquant.apis import benchmark as bm
from mmquant.apis.benchmark import run as benchmark_run
from mmquant.apis.evaluation import evaluate, to_jsonable
from mmquant.apis.ptq import build_float_model
from mmquant.checkpoint.int_model import load_quantized

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _write_config(cfg, folder, name):
    path = osp.join(str(folder), f'{name}.py')
    cfg.dump(path)
    return path


@pytest.fixture(scope='module')
def bench(ws, tmp_path_factory):
    folder = tmp_path_factory.mktemp('bench')
    config = _write_config(ws.cls_cfg('resnet'), folder, 'tiny_resnet')
    model = bm.BenchmarkModel(name='Tiny ResNet', config=config,
                              checkpoint=ws.float_ckpt('resnet'),
                              dataset='tiny')
    work_dir = str(folder / 'work')
    rows = bm.run_benchmark([model], ['rtn', 'bitsplit'], ['w4a8', 'w2a8'],
                            work_dir, calib_samples=12)
    return model, work_dir, rows


def test_rows_are_the_written_models(bench):
    model, work_dir, rows = bench
    assert [(r.method, r.bits) for r in rows] == [
        ('float', 'fp32'), ('rtn', 'w4a8'), ('rtn', 'w2a8'),
        ('bitsplit', 'w4a8'), ('bitsplit', 'w2a8')]
    cfg = Config.fromfile(model.config)
    float_model = build_float_model(cfg, model.checkpoint)
    assert rows[0].metrics == pytest.approx(evaluate(float_model, cfg))
    params = sum(p.numel() for p in float_model.parameters())
    for row in rows:
        assert row.task == 'Image Classification'
        assert row.params == params
        assert row.file_bytes == osp.getsize(row.file)
    for row in rows[1:]:
        assert row.ptq_seconds > 0
        assert row.file.startswith(work_dir)
        reloaded = load_quantized(
            build_float_model(cfg, model.checkpoint), row.file)
        assert evaluate(reloaded, cfg) == pytest.approx(row.metrics)
    # W2 files are smaller than W4 files
    sizes = {(r.method, r.bits): r.file_bytes for r in rows}
    assert sizes[('rtn', 'w2a8')] < sizes[('rtn', 'w4a8')]
    saved, info = bm.load_results(osp.join(work_dir, 'results.json'))
    assert saved == rows
    assert info['calib_samples'] == 12
    assert info['methods'] == ['rtn', 'bitsplit']
    assert len(info['sessions']) == 1


def test_resume_skips_finished_runs(bench, monkeypatch):
    model, work_dir, rows = bench

    def no_run(*args, **kwargs):
        raise AssertionError('a finished run was run again')

    monkeypatch.setattr(benchmark_run, 'build_float_model', no_run)
    again = bm.run_benchmark([model], ['rtn', 'bitsplit'],
                             ['w4a8', 'w2a8'], work_dir, calib_samples=12,
                             resume=True, info=dict(command='second'))
    assert again == rows
    _, info = bm.load_results(osp.join(work_dir, 'results.json'))
    assert [s.get('command') for s in info['sessions']] == [None, 'second']
    header = bm.render_header(info, rows=rows)
    assert 'Commands (one benchmark, resumed)' in header
    assert '`second`' in header


def test_markdown_rows(bench):
    _, _, rows = bench
    text = bm.render_markdown(rows)
    lines = [ln for ln in text.splitlines() if ln.startswith('| Tiny')]
    assert len(lines) == 5
    top1 = rows[0].metrics['accuracy/top1']
    assert f'| float | FP32 | {top1:.2f} |' in lines[0]
    rtn4 = rows[1]
    delta = rtn4.metrics['accuracy/top1'] - top1
    assert f'| RTN | W4A8 | {rtn4.metrics["accuracy/top1"]:.2f} |' \
        in lines[1]
    assert f'| {delta:+.2f} |' in lines[1]
    assert text.startswith('### Tiny ResNet (tiny)')
    header = text.splitlines()[2]
    assert header.startswith('| Model | Params(M) | Flops(G) | Method |')


def test_update_readme_replaces_only_the_section(tmp_path):
    path = tmp_path / 'README.md'
    before = '# X\n\n## Results\n\n'
    after = '\n\n## Citation\n\nkeep me\n'
    path.write_text(before + bm.README_START + '\nold\n' + bm.README_END
                    + after)
    bm.update_readme(str(path), 'new table\n')
    text = path.read_text()
    assert text == (before + bm.README_START + '\nnew table\n'
                    + bm.README_END + after)
    bm.update_readme(str(path), 'new table\n')
    assert path.read_text() == text


@pytest.mark.parametrize('body', ['no markers', bm.README_END + '\n'
                                  + bm.README_START,
                                  bm.README_START * 2 + bm.README_END])
def test_update_readme_needs_markers(tmp_path, body):
    path = tmp_path / 'README.md'
    path.write_text(body)
    with pytest.raises(ValueError, match='mmquant-benchmark:start'):
        bm.update_readme(str(path), 'x')
    assert path.read_text() == body


def test_metafile(bench):
    _, _, rows = bench
    data = yaml.safe_load(bm.render_metafile(rows, 'configs/x/README.md'))
    assert data['Collections'][0]['Name'] == 'BitSplit'
    assert data['Collections'][0]['README'] == 'configs/x/README.md'
    names = [m['Name'] for m in data['Models']]
    assert names == ['tiny_resnet_float_fp32', 'tiny_resnet_rtn_w4a8',
                     'tiny_resnet_rtn_w2a8', 'tiny_resnet_bitsplit_w4a8',
                     'tiny_resnet_bitsplit_w2a8']
    rtn2 = data['Models'][2]
    assert rtn2['Metadata']['Weight bits'] == 2
    assert rtn2['Metadata']['Activation bits'] == 8
    assert rtn2['Metadata']['File size'] == rows[2].file_bytes
    assert rtn2['Results'][0]['Metrics']['Top 1 Accuracy'] == round(
        rows[2].metrics['accuracy/top1'], 2)


def test_count_macs_exact():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),
                          nn.Conv2d(8, 8, 3, padding=1, groups=4,
                                    stride=2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    batch = dict(inputs=torch.zeros(2, 3, 10, 10))
    macs = bm.count_macs(model, batch, lambda m, b: m(b['inputs']))
    assert macs == 8 * 100 * 27 + 8 * 25 * (2 * 9) + 4 * 8


@pytest.mark.parametrize('tag,expected', [('w4a8', (4, 8)),
                                          ('W2A8', (2, 8)),
                                          ('w3af', (3, None)),
                                          ('w3.5a8', (3.5, 8))])
def test_parse_bits(tag, expected):
    assert bm.parse_bits(tag) == expected
    assert type(bm.parse_bits(tag)[0]) is type(expected[0])


@pytest.mark.parametrize('tag', ['w1a8', 'w9a8', '4a8', 'w4', 'w4a1',
                                 'w8.5a8', 'w1.9a8', 'w3.a8'])
def test_parse_bits_rejects(tag):
    with pytest.raises(ValueError, match='bad bit-width tag'):
        bm.parse_bits(tag)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown benchmark method 'gptq'"):
        bm.check_methods(['rtn', 'gptq'])


def test_replace_data_root():
    cfg = Config(dict(
        data_root='data/coco/',
        test_dataloader=dict(dataset=dict(data_root='data/coco/',
                                          ann_file='annotations/v.json')),
        test_evaluator=dict(ann_file='data/coco/annotations/v.json'),
        other='data/cocoa/x'))
    new = bm.replace_data_root(cfg, '/mnt/coco')
    assert new.test_dataloader.dataset.data_root == '/mnt/coco/'
    assert new.test_dataloader.dataset.ann_file == 'annotations/v.json'
    assert new.test_evaluator.ann_file == '/mnt/coco/annotations/v.json'
    assert new.other == 'data/cocoa/x'
    with pytest.raises(ValueError, match='top-level `data_root`'):
        bm.replace_data_root(Config(dict(model=dict())), '/x')


@pytest.mark.parametrize('models,match', [
    ([], 'non-empty `models`'),
    ([dict(name='a', config='c.py')], "lacks \\['checkpoint'\\]"),
    ([dict(name='a', config='c', checkpoint='k', bits=4)],
     "unknown keys \\['bits'\\]"),
    ([dict(name='a', config='c', checkpoint='k')] * 2, 'must be unique'),
])
def test_bad_benchmark_list(tmp_path, models, match):
    path = tmp_path / 'list.py'
    path.write_text(f'models = {models!r}\n')
    with pytest.raises(ValueError, match=match):
        bm.load_benchmark_list(str(path))


def test_offline_list_is_valid():
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    for name in ('fmnist_offline.py', 'in1k_coco.py', 'fmnist_ci.py'):
        models, cfg = bm.load_benchmark_list(
            osp.join(root, 'configs', 'benchmarks', name))
        assert models
        for model in models:
            assert osp.exists(osp.join(root, model.config)), model.config
        bm.check_methods(cfg.methods)
        for tag in cfg.bits:
            bm.parse_bits(tag)
    readme = osp.join(root, 'configs', 'bitsplit', 'README.md')
    with open(readme) as f:
        text = f.read()
    # exactly one marked section for the benchmark tool's --readme
    assert text.count(bm.README_START) == text.count(bm.README_END) == 1
    assert text.index(bm.README_START) < text.index(bm.README_END)


def test_results_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / 'results.json'
    bm.save_results(str(path), [], dict(a=1))
    before = path.read_text()

    def broken(*args, **kwargs):
        raise RuntimeError('disk full')

    monkeypatch.setattr(os, 'fsync', broken)
    with pytest.raises(RuntimeError, match='disk full'):
        bm.save_results(str(path), [], dict(a=2))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ['results.json']


def test_merge_results(bench, tmp_path):
    _, _, rows = bench
    info = dict(calib_samples=12, eval_samples=None, methods=['rtn'],
                bits=['w4a8'], sessions=[dict(command='a')])
    first, second = str(tmp_path / 'a.json'), str(tmp_path / 'b.json')
    bm.save_results(first, rows[:3], info)
    bm.save_results(second, rows[2:], dict(
        info, methods=['bitsplit'], sessions=[dict(command='b')]))
    merged, merged_info = bm.merge_results([first, second])
    assert merged == rows
    assert merged_info['methods'] == ['rtn', 'bitsplit']
    assert [s['command'] for s in merged_info['sessions']] == ['a', 'b']
    bm.save_results(second, rows[2:], dict(info, calib_samples=64))
    with pytest.raises(ValueError, match='calib_samples=64'):
        bm.merge_results([first, second])


def test_mixed_method_quantizer(tmp_path):
    """``bitsplit-mixed`` turns the tag's weight part into target_bits;
    the entry config it writes gives that back as metadata."""
    assert bm.method_quantizer('bitsplit-mixed', 'w3.5a8') == dict(
        type='mmquant.BitSplitQuantizer', error_compensation=True,
        target_bits=3.5, a_bits=8)
    assert bm.method_quantizer('bitsplit-mixed', 'w3a8')['target_bits'] \
        == 3.0
    assert bm.method_quantizer('bitsplit-fast-mixed', 'w3.5a8') == dict(
        type='mmquant.BitSplitQuantizer', error_compensation=False,
        target_bits=3.5, a_bits=8)
    with pytest.raises(ValueError, match="'w3.5a8': fractional weight bits "
                       "are an average-bits target; method 'bitsplit'"):
        bm.method_quantizer('bitsplit', 'w3.5a8')
    with pytest.raises(ValueError, match="method 'rtn' needs integer"):
        bm.run_benchmark([], ['rtn'], ['w3.5a8'], str(tmp_path))
    model_cfg = tmp_path / 'model.py'
    model_cfg.write_text("quantizer = dict(type='mmquant.BitSplitQuantizer')"
                         "\n")
    path = bm.entry_config_path(str(model_cfg), 'bitsplit-mixed', 'w3.5a8',
                                str(tmp_path))
    assert path.endswith('model_bitsplit-ec-mixed_w3.5a8.py')
    with open(path, 'w') as f:
        f.write(bm.render_entry_config(str(model_cfg), 'bitsplit-mixed',
                                       'w3.5a8', str(tmp_path)))
    assert bm.quantizer_metadata(Config.fromfile(path)) == {
        'Method': 'BitSplit', 'Mode': 'EC, mixed precision',
        'Weight bits': 3.5, 'Activation bits': 8}


def test_select_models():
    models = [bm.BenchmarkModel(name=n, config='c.py', checkpoint='x.pth')
              for n in ('A', 'B', 'C')]
    assert bm.select_models(models, None) == models
    assert [m.name for m in bm.select_models(models, ['C', 'A'])] == [
        'A', 'C']
    with pytest.raises(ValueError, match=r"unknown model name\(s\) \['D'\]; "
                       r"the list has \['A', 'B', 'C'\]"):
        bm.select_models(models, ['A', 'D'])


def test_metrics_as_json():
    """Rows keep the evaluator's single values as Python numbers; the PTQ
    report keeps everything, converted."""
    metrics = {'accuracy/top1': torch.tensor(90.5), 'count': np.int64(3),
               'ok': True, 'copypaste': '0.5 0.7', 'none': None,
               'classwise': [torch.tensor(1.0), 2.0], 'table': {1: 2.0},
               'object': object(), 7: 1.5}
    plain = bm.scalar_metrics(metrics)
    assert plain == {'accuracy/top1': 90.5, 'count': 3, 'ok': True,
                     'copypaste': '0.5 0.7', 'none': None, '7': 1.5}
    assert type(plain['accuracy/top1']) is float
    assert type(plain['count']) is int
    assert to_jsonable(dict(float=metrics)) == {'float': dict(
        plain, classwise=[1.0, 2.0], table={'1': 2.0},
        object=metrics['object'])}
    assert to_jsonable((torch.tensor(2), 'a')) == [2, 'a']
    # a list is left out whatever it holds
    assert bm.scalar_metrics({'m': [torch.zeros(2)]}) == {}


#: The benchmark package's modules from the bottom floor up: each may
#: import only the ones before it.
FLOORS = ('methods', 'lists', 'results', 'metafile', 'render', 'run',
          'ablation', 'check')


def test_package_floors():
    """Storage and rendering never import the runs; no module imports one
    above it (the package is layered like mmquant itself)."""
    folder = osp.dirname(bm.__file__)
    modules = sorted(name[:-3] for name in os.listdir(folder)
                     if name.endswith('.py') and name != '__init__.py')
    assert modules == sorted(FLOORS)
    for floor, name in enumerate(FLOORS):
        with open(osp.join(folder, f'{name}.py')) as f:
            tree = ast.parse(f.read())
        assert ast.get_docstring(tree), f'{name}.py has no docstring'
        inside = {node.module for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.level == 1}
        assert inside <= set(FLOORS[:floor]), (name, inside)


@pytest.mark.parametrize(
    'tool', ['benchmark.py', 'benchmark_ablation.py', 'benchmark_ptq.py'])
def test_tools_import_mmquant_only(tool):
    """The benchmark tools import the installed package: no sys.path
    edits, no other tool."""
    path = osp.join(ROOT, 'tools', 'analysis_tools', tool)
    with open(path) as f:
        tree = ast.parse(f.read())
    assert not [node for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and node.attr == 'path'
                and isinstance(node.value, ast.Name)
                and node.value.id == 'sys']
    imported = {alias.name.split('.')[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split('.')[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    tools = {osp.splitext(n)[0] for _, _, files in os.walk(
        osp.join(ROOT, 'tools')) for n in files if n.endswith('.py')}
    assert not imported & tools, imported & tools
