"""mmquant.allocator: the tools' glibc allocator setting."""
import subprocess
import sys

import pytest

from mmquant.allocator import keep_freed_memory

CHILD = (
    'import resource, sys, threading, torch\n'
    'from mmquant.allocator import keep_freed_memory\n'
    'print(keep_freed_memory())\n'
    'def blocks():\n'
    '    for _ in range(20):\n'
    '        x = torch.empty(32 << 20); x.fill_(1.0); del x\n'
    'f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n'
    'if sys.argv[1] == "thread":\n'
    '    t = threading.Thread(target=blocks); t.start(); t.join()\n'
    'else:\n'
    '    blocks()\n'
    'print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n')


def _child(env_value: str, where: str) -> list:
    out = subprocess.run(
        [sys.executable, '-c', CHILD, where], check=True,
        capture_output=True,
        text=True, env={'MMQUANT_KEEP_FREED_MEMORY': env_value,
                        'PATH': '/usr/bin:/bin'})
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='glibc only')
@pytest.mark.parametrize('where', ['main', 'thread'])
def test_freed_blocks_are_reused_not_faulted_in_again(where):
    # 20 blocks of 128 MB, each freed before the next, in the main thread
    # or in another (as the one pass's): with glibc's defaults each is
    # mmapped and faulted in page by page (measured: 20 blocks' worth);
    # kept, freed pages serve later blocks (measured: 4 blocks' worth in
    # the main thread, 8 in another; the rest depends on the platform)
    kept, faults_kept = _child('1', where)
    off, faults_off = _child('0', where)
    assert (kept, off) == ('True', 'False')
    assert int(faults_kept) * 2 < int(faults_off)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv('MMQUANT_KEEP_FREED_MEMORY', '0')
    assert keep_freed_memory() is False
