"""``tools/dist_ptq.sh`` and ``tools/dist_test.sh`` on 2 CPU processes
(gloo) against one process, on the bundled Fashion-MNIST example."""
import glob
import os
import os.path as osp
import subprocess
import sys
from typing import Any, List

import pytest
import torch

from mmquant.checkpoint import load_container

from .conftest import ROOT, free_port

CONFIG = osp.join(ROOT, 'configs', 'examples', 'fmnist_resnet_tiny.py')
CKPT = osp.join(ROOT, 'checkpoints', 'fmnist_resnet_tiny.pth')
#: One calibration batch of 32 images per process.
ARGS = ['--no-eval', '--calib-samples', '64']


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable,
                PORT=str(free_port()),
                PYTHONPATH=os.pathsep.join(
                    [ROOT, os.environ.get('PYTHONPATH', '')]))


def run(cmd: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=300)


def int_file(work_dir: str) -> str:
    files = glob.glob(osp.join(work_dir, 'latest', '*_int.pth'))
    assert len(files) == 1, files
    return files[0]


def assert_same(x: Any, y: Any, path: str = '') -> None:
    """Equal containers: tensors bit for bit, everything else equal (the
    config as run names its own run folder)."""
    if isinstance(x, dict):
        assert sorted(x) == sorted(y), path
        for k in x:
            if k != 'source_config':
                assert_same(x[k], y[k], f'{path}.{k}')
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y)):
            assert_same(u, v, f'{path}.{i}')
    elif torch.is_tensor(x):
        assert x.dtype == y.dtype and torch.equal(x, y), path
    else:
        assert x == y, path


@pytest.mark.parametrize('mode', ['--fast', '--method=bitsplit'])
def test_dist_ptq_two_processes_write_the_single_process_file(tmp_path,
                                                              mode):
    one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
    res = run([sys.executable, 'tools/ptq.py', CONFIG, CKPT, '--work-dir',
               one, mode] + ARGS)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run(['bash', 'tools/dist_ptq.sh', CONFIG, CKPT, '2',
               '--work-dir', two, mode] + ARGS)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert_same(load_container(int_file(one)),
                load_container(int_file(two)))
    # only rank 0 wrote: one run folder, one log
    runs = [n for n in os.listdir(two) if n != 'latest']
    assert len(runs) == 1
    assert len(glob.glob(osp.join(two, runs[0], '*.log'))) == 1


def test_crash_on_rank_1_stops_rank_0_and_writes_no_int_file(tmp_path):
    work = str(tmp_path / 'crash')
    res = run([sys.executable, '-m', 'torch.distributed.run',
               '--nproc_per_node=2', f'--master_port={free_port()}',
               osp.join(ROOT, 'tests', 'distributed', 'crash_ptq.py'),
               CONFIG, CKPT, '--launcher', 'pytorch', '--work-dir', work,
               '--fast'] + ARGS)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert ('DistributedRunError: distributed calibration stopped on rank '
            '0: rank 1 failed: RuntimeError: injected failure') in out, \
        out[-3000:]
    assert 'ptq.py (rank 1): error: injected failure' in out
    written = glob.glob(osp.join(work, '**', '*.pth'), recursive=True)
    assert written == []
    assert not osp.exists(osp.join(work, 'latest'))


def test_user_error_on_rank_0_before_calibration_stops_rank_1(tmp_path):
    # rank 0 cannot make its work dir (a file is in the way); rank 1,
    # which writes nothing, must not wait for it in the calibration
    blocker = tmp_path / 'file'
    blocker.write_text('')
    res = run(['bash', 'tools/dist_ptq.sh', CONFIG, CKPT, '2',
               '--work-dir', str(blocker / 'work'), '--fast'] + ARGS)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert 'ptq.py: error: ' in out, out[-3000:]
    assert ('ptq.py (rank 1): error: distributed calibration stopped on '
            'rank 1: rank 0 failed: ') in out, out[-3000:]


def test_dist_test_two_processes_give_the_single_process_metrics(tmp_path):
    work = str(tmp_path / 'ptq')
    res = run([sys.executable, 'tools/ptq.py', CONFIG, CKPT, '--work-dir',
               work, '--fast'] + ARGS)
    assert res.returncode == 0, res.stderr[-3000:]
    ready = glob.glob(osp.join(work, 'latest', '*_quantized.py'))[0]
    # the first 1000 test images
    opts = ['--cfg-options', 'test_dataloader.dataset.indices=1000']
    metrics = []
    for cmd in ([sys.executable, 'tools/test.py'],
                ['bash', 'tools/dist_test.sh']):
        args = [ready, int_file(work)] + (['2'] if 'bash' in cmd else [])
        res = run(cmd + args + ['--work-dir', str(tmp_path / 'test')] +
                  opts)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-3000:]
        line = [ln for ln in out.splitlines() if 'accuracy/top1' in ln]
        assert line, out[-3000:]
        metrics.append(line[-1].split('accuracy/top1:')[1].split()[0])
    assert metrics[0] == metrics[1]
