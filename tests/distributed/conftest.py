"""Spawning the ranks of a distributed calibration for the tests.

:func:`spawn` runs ``worker.py`` once per rank as a subprocess joined in
a gloo process group on a free localhost port (a world of 1 runs without
a process group: the single-process reference) and returns what each rank
saved. The tiny RetinaNet case reuses the data, config and float
checkpoint makers of tests/openmmlab.
"""
import json
import os
import os.path as osp
import socket
import subprocess
import sys
from typing import Any, Dict, List

import pytest
import torch

from ..openmmlab.conftest import (_calibrate_bn, det_config, make_coco,
                                  save_float, small_quantizer)

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(osp.dirname(HERE))
#: Seconds after which a hanging rank fails the test.
TIMEOUT = 150


def free_port() -> int:
    """A TCP port free on localhost now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def spawn(spec: Dict[str, Any], world: int, tmp: str) -> List[Dict[str, Any]]:
    """Run ``worker.py`` on ``world`` ranks; what each rank saved.

    Args:
        spec (dict): The case (see worker.py).
        world (int): Number of ranks (1: no process group).
        tmp (str): A folder for the spec and the results.

    Returns:
        list[dict]: Each rank's result, in rank order, with its exit
        status under ``'rc'``.
    """
    os.makedirs(tmp, exist_ok=True)
    spec_path = osp.join(tmp, f'spec_{world}.json')
    with open(spec_path, 'w') as f:
        json.dump(spec, f)
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(
                   [ROOT, os.environ.get('PYTHONPATH', '')]))
    outs = [osp.join(tmp, f'world{world}_rank{r}.pt') for r in range(world)]
    procs = [
        subprocess.Popen([sys.executable, osp.join(HERE, 'worker.py'),
                          spec_path, str(r), str(world), str(port), out],
                         env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for r, out in enumerate(outs)]
    results = []
    try:
        for proc, out in zip(procs, outs):
            log, _ = proc.communicate(timeout=TIMEOUT)
            assert osp.exists(out), f'rank wrote no result:\n{log}'
            result = torch.load(out, weights_only=False)
            result['rc'] = proc.returncode
            result['log'] = log
            results.append(result)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return results


@pytest.fixture(scope='package')
def retinanet(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """The tiny RetinaNet of tests/openmmlab: config file and float
    checkpoint."""
    tmp = str(tmp_path_factory.mktemp('dist_retinanet'))
    torch.set_num_threads(1)
    cfg = det_config(make_coco(osp.join(tmp, 'coco'), dict(train=8, val=4)),
                     'retinanet', small_quantizer())
    config = osp.join(tmp, 'retinanet.py')
    cfg.dump(config)
    ckpt = save_float(_calibrate_bn(cfg), osp.join(tmp, 'retinanet.pth'))
    return dict(config=config, checkpoint=ckpt)
