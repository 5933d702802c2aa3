"""The committed model index and benchmark files.

* ``model-index.yml`` loads the way mim's model-index loader reads it
  (``Import`` followed relative to the file, OpenMMLab's entry schema),
  every entry's ``Config`` exists, parses with mmengine and fixes the
  method, mode and bits its ``Metadata`` names; measured entries have
  results and nothing else has numbers;
* the files ``tools/analysis_tools/benchmark.py`` writes are what it
  writes from the committed results JSON, byte for byte: the Results section of
  ``configs/bitsplit/README.md``, ``configs/bitsplit/metafile.yml``, the
  entry configs in ``configs/bitsplit/fmnist/`` and the CI subset's
  metafile, so no number is edited by hand.
"""
import os
import os.path as osp

import pytest
import yaml
from mmengine.config import Config

from mmquant.apis import benchmark as bm

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BITSPLIT = 'configs/bitsplit'
RESULTS = 'configs/bitsplit/results/fmnist_offline.json'
ABLATION = 'configs/bitsplit/results/fmnist_ablation.json'
ENTRY_DIR = 'configs/bitsplit/fmnist'
CI_DIR = 'tests/benchmarks/fmnist_ci'
#: The quantized ImageNet/COCO configs: entries without results.
UNMEASURED = [f'{BITSPLIT}/{arch}_w{w}a8_{data}.py'
              for arch, data in (('faster-rcnn_r50_fpn', 'coco'),
                                 ('resnet18', 'in1k'),
                                 ('retinanet_r50_fpn', 'coco'))
              for w in (3, 4, 8)]


_PARSED = {}


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    """Paths in the index and the results are relative to the root; each
    config is parsed once in this module (the mmdet ones take a second)."""
    monkeypatch.chdir(ROOT)
    parse = Config.fromfile

    def fromfile(path, *args, **kwargs):
        if args or kwargs:
            return parse(path, *args, **kwargs)
        key = osp.abspath(path)
        if key not in _PARSED:
            _PARSED[key] = parse(path)
        return _PARSED[key]

    monkeypatch.setattr(Config, 'fromfile', fromfile)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_model_index_imports_the_metafile():
    with open('model-index.yml') as f:
        index = yaml.safe_load(f)
    assert index == {'Import': ['configs/bitsplit/metafile.yml']}


def test_every_entry_config_reproduces_its_metadata():
    entries = bm.load_model_index('model-index.yml')
    rows, _ = bm.load_results(RESULTS)
    # 3 float + 3 models x 3 methods x 4 widths + 3 models x 2 mixed
    # methods x 2 targets measured, 9 not measured
    assert len(entries) == 3 + 36 + 12 + 9
    with open(f'{BITSPLIT}/metafile.yml') as f:
        collection = yaml.safe_load(f)['Collections'][0]
    assert collection['Name'] == 'BitSplit'
    assert osp.isfile(collection['README'])
    for name, entry in entries.items():
        assert set(entry) - {'_metafile'} <= {
            'Name', 'In Collection', 'Config', 'Metadata', 'Results',
            'Weights'}, name
        assert entry['In Collection'] == 'BitSplit'
        assert osp.isfile(entry['Config']), entry['Config']
        cfg = Config.fromfile(entry['Config'])
        meta = entry['Metadata']
        if meta['Method'] == 'float':
            assert meta['Weight bits'] == meta['Activation bits'] == 32
            assert osp.isfile(entry['Weights'])
            continue
        # the config alone fixes method, mode and bits
        fixed = bm.quantizer_metadata(cfg)
        assert fixed == {k: meta[k] for k in fixed}, name
        assert set(meta) - set(fixed) <= {
            'Calibration images', 'Test samples', 'Parameters', 'FLOPs',
            'File size', 'Measured'}, name
        assert 'Weights' not in entry  # no INT file is published
    measured = {bm.entry_name(r.model, r.method, r.bits): r for r in rows}
    unmeasured = {osp.splitext(osp.basename(p))[0]: p for p in UNMEASURED}
    assert set(entries) == set(measured) | set(unmeasured)
    for name, path in unmeasured.items():
        # nothing measured: no numbers at all
        assert entries[name]['Config'] == path
        assert 'Results' not in entries[name]
        assert entries[name]['Metadata']['Measured'] is False
        assert set(entries[name]['Metadata']) == {
            'Method', 'Mode', 'Weight bits', 'Activation bits', 'Measured'}
    for name, row in measured.items():
        entry = entries[name]
        assert entry['Metadata']['Test samples'] == 'all'
        if row.method != 'float':
            assert entry['Metadata']['Calibration images'] == 256
            assert entry['Config'] == bm.entry_config_path(
                row.config, row.method, row.bits, ENTRY_DIR)
        [result] = entry['Results']
        assert result['Dataset'] == row.dataset
        assert result['Task'] == row.task


def test_entry_config_equals_the_benchmark_quantizer():
    """The entry config's quantizer is exactly the one run_benchmark
    merged over the model config's own."""
    cfg = Config.fromfile(f'{ENTRY_DIR}/resnet18-w16_fmnist_rtn_w2a8.py')
    base = Config.fromfile('configs/fmnist/resnet18-w16_fmnist.py')
    assert cfg.quantizer == dict(base.quantizer, type='mmquant.RTNQuantizer',
                                 w_bits=2, a_bits=8)
    assert cfg.model == base.model
    assert cfg.test_dataloader == base.test_dataloader
    cfg = Config.fromfile(
        f'{ENTRY_DIR}/retinanet_r18-w12_fmnist-det_bitsplit-fast_w3a8.py')
    assert dict(cfg.quantizer) == {
        'type': 'mmquant.BitSplitQuantizer', 'w_bits': 3, 'a_bits': 8,
        'error_compensation': False}


def test_readme_section_is_generated(tmp_path):
    rows, info = bm.load_results(RESULTS)
    readme = f'{BITSPLIT}/README.md'
    copy = tmp_path / 'README.md'
    copy.write_text(_read(readme))
    bm.update_readme(str(copy), bm.render_header(info, '', rows)
                     + bm.render_markdown(rows, BITSPLIT, ENTRY_DIR))
    assert copy.read_text() == _read(readme)


def test_metafile_and_entry_configs_are_generated():
    rows, info = bm.load_results(RESULTS)
    unmeasured = bm.unmeasured_configs(rows, BITSPLIT)
    assert unmeasured == UNMEASURED
    assert bm.render_metafile(rows, f'{BITSPLIT}/README.md', info,
                              ENTRY_DIR, unmeasured) == \
        _read(f'{BITSPLIT}/metafile.yml')
    paths = set()
    for row in rows:
        if row.method != 'float':
            path = bm.entry_config_path(row.config, row.method, row.bits,
                                        ENTRY_DIR)
            assert _read(path) == bm.render_entry_config(
                row.config, row.method, row.bits, ENTRY_DIR), path
            paths.add(path)
    # no stale entry config
    assert {osp.join(ENTRY_DIR, n) for n in os.listdir(ENTRY_DIR)} == paths


def test_ci_metafile_is_generated():
    rows, info = bm.load_results(f'{CI_DIR}/results.json')
    assert info['calib_samples'] == 64 and info['eval_samples'] == 1000
    assert bm.render_metafile(
        rows, f'{CI_DIR}/README.md', info, ENTRY_DIR,
        bm.unmeasured_configs(rows, CI_DIR)) == _read(
            f'{CI_DIR}/metafile.yml')


def test_regeneration_is_idempotent(tmp_path):
    """write_metafile twice gives the same bytes and leaves the entry
    configs untouched."""
    rows, info = bm.load_results(RESULTS)
    entry_dir = str(tmp_path / 'entries')
    first = tmp_path / 'metafile.yml'
    bm.write_metafile(str(first), rows, 'README.md', info, entry_dir, [])
    text = first.read_text()
    mtimes = {n: os.stat(osp.join(entry_dir, n)).st_mtime_ns
              for n in os.listdir(entry_dir)}
    assert len(mtimes) == 48
    bm.write_metafile(str(first), rows, 'README.md', info, entry_dir, [])
    assert first.read_text() == text
    assert {n: os.stat(osp.join(entry_dir, n)).st_mtime_ns
            for n in os.listdir(entry_dir)} == mtimes


def test_ablation_sections_are_generated(tmp_path):
    """The ablation tables of docs/solver.md and the configs README are
    what tools/analysis_tools/benchmark_ablation.py renders from the
    committed JSON, and its first variant's rows are the benchmark's own
    rows."""
    rows, info = bm.load_ablation(ABLATION)
    _, lst = bm.load_benchmark_list('configs/benchmarks/fmnist_ablation.py')
    variants = bm.load_variants(lst)
    text = bm.render_ablation(rows, variants, info)
    for page in ('docs/solver.md', f'{BITSPLIT}/README.md'):
        copy = tmp_path / 'page.md'
        copy.write_text(_read(page))
        bm.update_readme(str(copy), text, bm.ABLATION_START,
                         bm.ABLATION_END)
        assert copy.read_text() == _read(page), page
    bench = {r.key: r for r in bm.load_results(RESULTS)[0]}
    taken = [r for r in rows if r.extra.get('source') == RESULTS]
    assert len(taken) == 3 * (1 + 2 * 3)  # float + 2 modes x 3 widths
    for row in taken:
        method = 'float' if row.variant == 'float' else row.mode
        assert row.variant in ('float', variants[0].name)
        assert row.metrics == bench[(row.model, method, row.bits)].metrics
