"""mmquant.allocator: the tools' glibc allocator setting."""
import subprocess
import sys

import pytest

from mmquant.allocator import keep_freed_memory

CHILD = (
    'import resource, torch\n'
    'from mmquant.allocator import keep_freed_memory\n'
    'print(keep_freed_memory())\n'
    'f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n'
    'for _ in range(20):\n'
    '    x = torch.empty(16 << 20); x.fill_(1.0); del x\n'
    'print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n')


def _child(env_value: str) -> list:
    out = subprocess.run(
        [sys.executable, '-c', CHILD], check=True, capture_output=True,
        text=True, env={'MMQUANT_KEEP_FREED_MEMORY': env_value,
                        'PATH': '/usr/bin:/bin'})
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='glibc only')
def test_freed_blocks_are_reused_not_faulted_in_again():
    # 20 blocks of 64 MB, each freed before the next: with glibc's
    # defaults each is mmapped and faulted in page by page; kept, the
    # first block's pages serve all of them (whatever the page size)
    kept, faults_kept = _child('1')
    off, faults_off = _child('0')
    assert (kept, off) == ('True', 'False')
    assert int(faults_kept) * 5 < int(faults_off)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv('MMQUANT_KEEP_FREED_MEMORY', '0')
    assert keep_freed_memory() is False
