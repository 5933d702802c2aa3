"""``tools/analysis_tools/benchmark.py --check``: the regression check.

The CI subset (``configs/benchmarks/fmnist_ci.py``: ResNet-18 16 ch float
and BitSplit EC W4A8, 64 calibration images, the first 1,000 real
Fashion-MNIST test images) is re-run through the ``--check`` code path
against its committed metafile, which the same tool wrote from a run of
the same list, so subset values are compared with subset values:

* it passes against the committed values;
* it fails (exit 1, the table shows the drop) when a committed value is
  raised in a temporary copy of the metafile.

The other tests need no run: tolerance and exit-status rules on
hand-made rows, skipped entries with their reasons, sample-count
mismatches and the model-index loader.
"""
import os.path as osp
import time

import pytest
import yaml
from mmengine.logging import MMLogger

from mmquant.apis import benchmark as bm
from mmquant.apis.benchmark import check as bc
from mmquant.apis.benchmark import run as benchmark_run
from .conftest import ROOT, load_tool

CI_LIST = 'configs/benchmarks/fmnist_ci.py'
CI_METAFILE = 'tests/benchmarks/fmnist_ci/metafile.yml'
FMNIST = osp.join(ROOT, 'data', 'fashion-mnist')
EC = 'resnet-18_16_ch_bitsplit_w4a8'


@pytest.fixture
def tool(monkeypatch):
    """``main`` of tools/analysis_tools/benchmark.py, run at the root:
    returns its exit status for an argument list."""
    monkeypatch.chdir(ROOT)
    # made here, before capsys replaces sys.stdout, the tool's logger keeps
    # writing to pytest's own capture (a handler on capsys' stream would
    # write to a closed file in later tests)
    MMLogger.get_instance('mmquant', log_level='INFO')
    module = load_tool('analysis_tools', 'benchmark.py')

    def run(*args: str) -> int:
        monkeypatch.setattr('sys.argv', ['benchmark.py', *args])
        with pytest.raises(SystemExit) as exc:
            module.main()
        return exc.value.code

    return run


def _table(text: str) -> list:
    return [line for line in text.splitlines() if line.startswith('| ')
            and not line.startswith(('| Entry', '| ---'))]


def test_ci_subset_passes_then_fails_when_raised(tool, tmp_path, capsys,
                                                 monkeypatch):
    if not osp.isdir(FMNIST):
        pytest.skip(f'{FMNIST} is missing; `bash tools/install.sh` makes it')
    work = str(tmp_path / 'check')
    t0 = time.perf_counter()
    assert tool(CI_LIST, '--check', CI_METAFILE, '--work-dir', work) == 0
    seconds = time.perf_counter() - t0
    out = capsys.readouterr().out
    with open(osp.join(work, 'check.md')) as f:
        report = f.read()
    assert out.endswith(report)  # after the log lines
    assert '4 metrics of 2 entries compared' in report
    assert report.endswith('Result: PASS (exit status 0).\n')
    # the values measured now (same subset, same code path)
    rows = {r.method: r for r in bm.load_results(osp.join(
        work, 'ResNet-18_16_ch', 'results.json'))[0]}
    assert rows['float'].extra and rows['bitsplit'].ptq_seconds > 0
    measured = round(rows['bitsplit'].metrics['accuracy/top1'], 2)
    with open(osp.join(ROOT, CI_METAFILE)) as f:
        meta = yaml.safe_load(f)
    [entry] = [m for m in meta['Models'] if m['Name'] == EC]
    committed = entry['Results'][0]['Metrics']['Top 1 Accuracy']
    assert measured >= committed - 0.3
    # raise the committed top-1 by 1.0 point in a copy: the check fails
    entry['Results'][0]['Metrics']['Top 1 Accuracy'] = committed + 1.0
    raised = tmp_path / 'metafile.yml'
    raised.write_text(yaml.safe_dump(meta, sort_keys=False))

    def no_run(*args, **kwargs):
        raise AssertionError('--resume measured again')

    # the comparison only: the runs of the first check are kept
    monkeypatch.setattr(benchmark_run, 'build_float_model', no_run)
    assert tool(CI_LIST, '--check', str(raised), '--work-dir', work,
                '--resume') == bc.CHECK_REGRESSION
    out = capsys.readouterr().out
    delta = round(measured - committed - 1.0, 2)
    assert f'| {EC} | Top 1 Accuracy | {committed + 1.0:.2f} | ' \
        f'{measured:.2f} | {delta:+.2f} | FAIL |' in _table(out)
    assert 'FAIL: 1 metrics below tolerance (exit status 1)' in out
    # a tolerance above the drop passes the same comparison
    assert tool(CI_LIST, '--check', str(raised), '--work-dir', work,
                '--resume', '--tolerance', str(-delta + 0.01)) == 0
    print(f'CI subset check: {seconds:.1f} s')


def _row(top1: float, top5: float = 99.0) -> bm.BenchmarkRow:
    return bm.BenchmarkRow(
        model='M', config='c.py', task='Image Classification', dataset='d',
        method='rtn', bits='w4a8',
        metrics={'accuracy/top1': top1, 'accuracy/top5': top5}, params=1,
        flops=1, file_bytes=1)


def _entry(top1: float, top5: float = 99.0) -> dict:
    return dict(Name='m_rtn_w4a8', Results=[dict(
        Task='Image Classification', Dataset='d',
        Metrics={'Top 1 Accuracy': top1, 'Top 5 Accuracy': top5})])


@pytest.mark.parametrize('measured,failed', [
    (90.0, False), (89.7, False), (89.69, True), (89.704, False),
    (89.695, True), (95.0, False)])
def test_tolerance_is_a_drop_in_points(measured, failed):
    """0.3 below the committed 90.00 passes, 0.31 fails; the measured
    value is rounded to 2 decimals as the metafile rounds it; rising
    values never fail."""
    [top1, top5] = bc._compare(_entry(90.0), _row(measured), 0.3)
    assert top1['failed'] is failed
    assert top1['measured'] == round(measured, 2)
    assert top1['delta'] == round(round(measured, 2) - 90.0, 2)
    assert top5 == dict(entry='m_rtn_w4a8', metric='Top 5 Accuracy',
                        committed=99.0, measured=99.0, delta=0.0,
                        failed=False)


def test_box_ap_is_compared_in_points():
    row = bm.BenchmarkRow(
        model='D', config='c.py', task='Object Detection', dataset='d',
        method='bitsplit', bits='w3a8',
        metrics={'coco/bbox_mAP': 0.677, 'coco/bbox_mAP_50': 0.808},
        params=1, flops=1, file_bytes=1)
    entry = dict(Name='d', Results=[dict(Metrics={
        'box AP': 68.0, 'box AP@0.5': 80.8, 'box AP@0.75': 70.0})])
    ap, ap50, ap75 = bc._compare(entry, row, 0.3)
    assert (ap['measured'], ap['delta'], ap['failed']) == (
        67.7, -0.3, False)
    assert (ap50['delta'], ap50['failed']) == (0.0, False)
    # a committed metric the run does not give fails
    assert (ap75['measured'], ap75['failed']) == (None, True)


def test_exit_status_rules():
    report = bc.CheckReport(index='x', tolerance=0.3)
    assert report.exit_code() == bc.CHECK_NOT_ENOUGH  # nothing checked
    assert report.exit_code(min_checked=0) == 0
    report.compared = bc._compare(_entry(90.0), _row(90.0), 0.3)
    report.skipped = [('a', 'checkpoint k.pth not found', True),
                      ('b', 'method or bits not selected', False),
                      ('c', 'method or bits not selected', False)]
    assert report.checked == ['m_rtn_w4a8']
    assert report.exit_code() == 0
    assert report.exit_code(strict=True) == bc.CHECK_NOT_ENOUGH
    assert report.exit_code(min_checked=2) == bc.CHECK_NOT_ENOUGH
    report.compared += bc._compare(_entry(91.0), _row(90.0), 0.3)
    assert report.exit_code(min_checked=0) == bc.CHECK_REGRESSION
    text = bc.render_check(report)
    assert _table(text)[:1] == [
        '| m_rtn_w4a8 | Top 1 Accuracy | 91.00 | 90.00 | -1.00 | FAIL |']
    assert '| a | checkpoint k.pth not found |' in text
    assert 'Skipped 1 entries' in text and '| b |' not in text
    assert 'Not selected: 2 entries' in text
    assert text.endswith('Result: FAIL: 1 metrics below tolerance (exit '
                         'status 1).\n')


def test_nothing_checkable_fails(tool, capsys):
    """The ImageNet/COCO list against the committed metafile: the
    ImageNet/COCO entries have no committed value, the offline entries are
    no runs of that list: nothing compared, exit 3."""
    assert tool('configs/benchmarks/in1k_coco.py', '--check',
                'model-index.yml',
                '--work-dir', 'work_dirs/never') == bc.CHECK_NOT_ENOUGH
    out = capsys.readouterr().out
    assert '0 metrics of 0 entries compared' in out
    assert '| resnet18_w4a8_in1k | not measured (no committed Results) |' \
        in out
    # the 51 offline entries (3 float, 36 uniform, 12 mixed) are runs of
    # other models
    assert 'Skipped 9 entries' in out
    assert 'Not selected: 51 entries' in out
    assert 'mobilenetv2' not in out
    assert not osp.exists(osp.join(ROOT, 'work_dirs', 'never',
                                   'results.json'))


def test_missing_checkpoint_and_data_are_skipped(tool, tmp_path, capsys):
    lst = tmp_path / 'list.py'
    lst.write_text(
        "models = [dict(name='ResNet-18 (16 ch)', config='configs/fmnist/"
        "resnet18-w16_fmnist.py', checkpoint='checkpoints/nope.pth')]\n"
        "methods = ['bitsplit']\nbits = ['w4a8']\n")
    work = str(tmp_path / 'w')
    assert tool(str(lst), '--check', CI_METAFILE,
                '--work-dir', work) == bc.CHECK_NOT_ENOUGH
    out = capsys.readouterr().out
    assert f'| {EC} | checkpoint checkpoints/nope.pth not found |' in out
    lst.write_text(lst.read_text().replace('nope.pth',
                                           'resnet18-w16_fmnist.pth'))
    assert tool(str(lst), '--check', CI_METAFILE, '--work-dir', work,
                '--data-root', str(tmp_path / 'nodata')) == \
        bc.CHECK_NOT_ENOUGH
    out = capsys.readouterr().out
    assert f'| {EC} | data {tmp_path}/nodata not found |' in out
    assert 'Skipped 2 entries' in out


def test_subset_mismatch_is_an_error(tool):
    if not osp.isdir(FMNIST):
        pytest.skip(f'{FMNIST} is missing')
    with pytest.raises(ValueError, match='measured with test samples '
                       '1000; a check with 500'):
        tool(CI_LIST, '--check', CI_METAFILE, '--eval-samples', '500',
             '--work-dir', 'work_dirs/never')


def test_bad_arguments(tool, capsys):
    with pytest.raises(ValueError, match='tolerance must be >= 0'):
        tool(CI_LIST, '--check', CI_METAFILE, '--tolerance', '-1')
    assert tool(CI_LIST, '--check', CI_METAFILE, '--metafile', 'm.yml') == 2
    assert '--check writes no tables' in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match='model index nope.yml'):
        tool(CI_LIST, '--check', 'nope.yml')


def test_load_model_index_follows_imports(tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'model-index.yml').write_text(
        'Import:\n  - a/metafile.yml\n')
    (tmp_path / 'a' / 'metafile.yml').write_text(
        'Models:\n  - Name: x\n    Config: c.py\n  - Name: y\n')
    entries = bc.load_model_index(str(tmp_path / 'model-index.yml'))
    assert list(entries) == ['x', 'y']
    assert entries['x']['_metafile'] == str(tmp_path / 'a' /
                                            'metafile.yml')
    (tmp_path / 'b.yml').write_text('Import:\n  - a/metafile.yml\n'
                                    'Models:\n  - Name: x\n')
    with pytest.raises(ValueError, match="model 'x' is also in"):
        bc.load_model_index(str(tmp_path / 'b.yml'))
    (tmp_path / 'c.yml').write_text('Import:\n  - a/missing.yml\n')
    with pytest.raises(FileNotFoundError, match='imported by'):
        bc.load_model_index(str(tmp_path / 'c.yml'))
    (tmp_path / 'd.yml').write_text('Foo: 1\n')
    with pytest.raises(ValueError, match='not a model index'):
        bc.load_model_index(str(tmp_path / 'd.yml'))


def test_imagenet_entry_without_data_is_skipped(tool, tmp_path, capsys):
    """What a CI job on a runner without ImageNet sees: the committed
    ImageNet value is not compared but reported as skipped with the
    reason, and --strict fails the job."""
    checkpoint = tmp_path / 'resnet18.pth'
    checkpoint.write_bytes(b'')  # present, never read
    lst = tmp_path / 'in1k.py'
    lst.write_text(
        "models = [dict(name='ResNet-18', config='configs/bitsplit/"
        f"resnet18_w4a8_in1k.py', checkpoint='{checkpoint}')]\n"
        "methods = ['bitsplit']\nbits = ['w4a8']\n")
    metafile = tmp_path / 'metafile.yml'
    metafile.write_text(yaml.safe_dump(dict(Models=[dict(
        Name='resnet-18_bitsplit_w4a8',
        Config='configs/bitsplit/resnet18_w4a8_in1k.py',
        Metadata={'Calibration images': 256, 'Test samples': 'all'},
        Results=[dict(Task='Image Classification', Dataset='ImageNet-1k',
                      Metrics={'Top 1 Accuracy': 1.0})])])))
    args = [str(lst), '--check', str(metafile), '--work-dir',
            str(tmp_path / 'w'), '--data-root', str(tmp_path / 'imagenet')]
    assert tool(*args, '--min-checked', '0') == 0
    assert tool(*args, '--min-checked', '0', '--strict') == \
        bc.CHECK_NOT_ENOUGH
    assert tool(*args) == bc.CHECK_NOT_ENOUGH
    out = capsys.readouterr().out
    assert f'| resnet-18_bitsplit_w4a8 | data {tmp_path}/imagenet not ' \
        'found |' in out
    assert 'FAIL: 0 entries checked (at least 1 required)' in out
