"""tools/deploy/export_onnx.py on the bundled example's config."""
import importlib.util
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from torch import nn

import mmquant
from mmquant.apis.ptq import build_float_model
from mmquant.checkpoint.container import CheckpointError
from mmquant.deploy import ExportError, ort_session

pytest.importorskip('onnxruntime')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs/examples/fmnist_resnet_tiny.py')
FLOAT = osp.join(ROOT, 'checkpoints/fmnist_resnet_tiny.pth')


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tool():
    path = osp.join(ROOT, 'tools/deploy/export_onnx.py')
    spec = importlib.util.spec_from_file_location('export_onnx_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Logits(nn.Module):

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x, None, 'tensor')


@pytest.fixture(scope='module')
def int_checkpoint(tmp_path_factory):
    """A W4A8 RTN INT checkpoint of the bundled example (random images)."""
    cfg = Config.fromfile(CONFIG)
    model = build_float_model(cfg, FLOAT)
    gen = torch.Generator().manual_seed(0)
    pixels = [torch.rand(8, 1, 28, 28, generator=gen) * 255
              for _ in range(2)]
    batches = [
        model.data_preprocessor(dict(inputs=list(p), data_samples=None),
                                False)['inputs'] for p in pixels
    ]
    qwrap, _ = mmquant.quantize(
        _Logits(model), batches,
        mmquant.QuantConfig(w_bits=4, a_bits=8, method='rtn'))
    path = str(tmp_path_factory.mktemp('int') / 'tiny_w4a8_int.pth')
    mmquant.save(qwrap.model, path)
    return path


def test_tool_exports_what_quantized_model_predicts(int_checkpoint,
                                                    tmp_path):
    out = str(tmp_path / 'tiny.onnx')
    assert _tool().main([CONFIG, int_checkpoint, '--out', out, '--shape',
                         '1', '1', '28', '28']) == out
    # what tools/test.py runs: the float architecture + the INT checkpoint
    cfg = Config.fromfile(CONFIG)
    qmodel = mmquant.load(build_float_model(cfg), int_checkpoint).eval()
    pixels = torch.rand(16, 1, 28, 28,
                        generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        data = qmodel.data_preprocessor(
            dict(inputs=list(pixels), data_samples=None), False)
        ref = qmodel(data['inputs'], None, 'tensor').numpy()
    # three lines: session, run on the packed pixels, argmax
    sess = ort_session(out)
    logits = sess.run(None, {'input': pixels.numpy()})[0]
    assert np.array_equal(logits.argmax(1), ref.argmax(1))
    # an image whose activations pass a rounding tie in another float
    # order gets slightly other logits (test_onnx_export.py proves that
    # this is the only difference); most images have none
    exact = np.abs(logits - ref).max(1) <= 1e-5 * np.abs(ref).max()
    assert exact.sum() >= 12, exact


def test_tool_refuses_wrong_shape_and_float_checkpoint(int_checkpoint,
                                                       tmp_path):
    tool = _tool()
    out = tmp_path / 'x.onnx'
    with pytest.raises(ExportError, match=r'example inputs of shape '
                       r'\(1, 3, 28, 28\).*expected input.*1 channels'):
        tool.main([CONFIG, int_checkpoint, '--out', str(out), '--shape',
                   '1', '3', '28', '28'])
    with pytest.raises(SystemExit):
        tool.parse_args([CONFIG, int_checkpoint, '--out', str(out),
                         '--shape', '1', '0', '28', '28'])
    with pytest.raises(CheckpointError, match='not an mmquant INT '
                       'checkpoint'):
        tool.main([CONFIG, FLOAT, '--out', str(out), '--shape', '1', '1',
                   '28', '28'])
    assert not out.exists()
    # on the command line: one line naming the problem, exit status 1
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools/deploy/export_onnx.py'),
         CONFIG, FLOAT, '--out', str(out), '--shape', '1', '1', '28', '28'],
        capture_output=True, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        'export_onnx.py: error: ')
    assert 'Traceback' not in proc.stderr
    assert not out.exists()


def test_benchmark_script(int_checkpoint, tmp_path):
    """tools/analysis_tools/benchmark_onnx.py on 250 test images."""
    if not osp.exists(osp.join(ROOT, 'data/fashion-mnist',
                               't10k-images-idx3-ubyte')):
        pytest.skip('Fashion-MNIST is not unpacked (tools/install.sh)')
    path = osp.join(ROOT, 'tools/analysis_tools/benchmark_onnx.py')
    spec = importlib.util.spec_from_file_location('benchmark_onnx', path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main([
        CONFIG, FLOAT, '--int', f'W4A8={int_checkpoint}', '--shape', '1',
        '28', '28', '--batch', '1', '--warmup', '1', '--repeats', '2',
        '--max-images', '250', '--work-dir',
        str(tmp_path)
    ])
    modes = [(r['model'], r['mode']) for r in res['rows']]
    assert modes == [('float', 'ort-defaults'), ('W4A8', 'exact'),
                     ('W4A8', 'ort-defaults'), ('W4A8', 'folded')]
    rows = {r['model']: r for r in res['rows'] if r['mode'] != 'folded'}
    for row in rows.values():
        assert row['images'] == 250
        assert row['latency_ms_b1'] > 0
        assert row['top1_onnx'] == row['top1_torch']
        assert row['differing_predictions'] <= 1
    assert rows['float']['top1_torch'] > 80
    assert rows['W4A8']['onnx_bytes'] < rows['float']['onnx_bytes'] / 4
    assert (tmp_path / 'results.md').read_text().count('\n') == 6
