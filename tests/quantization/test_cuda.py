"""The pipeline on a device: placement, --device, CPU/CUDA agreement.

The CUDA tests run when CUDA is present and are skipped otherwise; the
device-independent parts (where the quantized layer puts its buffers,
how ``--device`` is resolved and refused) run everywhere.
"""
import pytest
import torch
from torch import nn

import mmquant
from mmquant import QuantConfig
from mmquant.apis.ptq import PTQInputError, resolve_device
from mmquant.core.stats import LayerGeometry, StatsAccumulator
from mmquant.nn import QuantizedLayer

from .models import TinyNet, init_model, smooth_images

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='needs CUDA')


def test_quantized_layer_buffers_follow_the_layer_device():
    """Integers and scales given on the CPU for a layer on another
    device (meta here) end up on the layer's device, act_scale too."""
    conv = nn.Conv2d(2, 3, 1, device='meta')
    q = torch.zeros(3, 2, 1, 1, dtype=torch.int8)
    layer = QuantizedLayer(conv, q, torch.ones(3), 4, 8, act_scale=0.5)
    for name, buf in layer.named_buffers():
        assert buf.device.type == 'meta', name
    assert layer.layer.weight.device.type == 'meta'


def test_resolve_device_default_and_cpu():
    expect = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert resolve_device(None).type == expect
    assert resolve_device('cpu') == torch.device('cpu')


@pytest.mark.parametrize('bad, match', [
    ('tpu0', 'not a torch device'),
    ('meta', "must be 'cpu' or 'cuda"),
    ('cuda:99', 'CUDA'),
])
def test_resolve_device_refuses(bad, match):
    with pytest.raises(PTQInputError, match=match):
        resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is present')
def test_resolve_device_cuda_without_cuda():
    with pytest.raises(PTQInputError, match='CUDA is not available'):
        resolve_device('cuda')


def test_ptq_tool_has_device_argument():
    import importlib.util
    import os.path as osp
    path = osp.join(osp.dirname(__file__), '..', '..', 'tools', 'ptq.py')
    spec = importlib.util.spec_from_file_location('_ptq_tool', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = tool.parse_args(['cfg.py', 'ckpt.pth', '--device', 'cpu'])
    assert args.device == 'cpu'
    assert tool.parse_args(['cfg.py', 'ckpt.pth']).device is None


def _batches(device):
    return [b.to(device) for b in smooth_images(16, 16, 0).split(8)]


def _quantize(device, ec):
    torch.manual_seed(0)
    model = init_model(TinyNet()).to(device)
    cfg = QuantConfig(w_bits=4, a_bits=8, rows_per_layer=200,
                      error_compensation=ec)
    return mmquant.quantize(model, _batches(device), cfg)


@needs_cuda
def test_stats_on_cuda_match_cpu():
    """Same sampled rows (CPU-drawn indices) on both devices; float64
    sums differ only by summation order."""
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=2)
    x = torch.randn(4, 8, 15, 15)
    with torch.no_grad():
        y = conv(x) - conv.bias.reshape(1, -1, 1, 1)
    geom = LayerGeometry.from_module(conv)
    accs = []
    for dev in ('cpu', 'cuda'):
        acc = StatsAccumulator(geom, 50, torch.Generator().manual_seed(1))
        acc.update(x.to(dev), y.to(dev))
        rows = acc.input_rows(x.to(dev), torch.tensor([3, 0, 7]))
        assert rows.device.type == dev
        assert torch.equal(rows.cpu(), acc.input_rows(x)[[3, 0, 7]])
        assert acc.A.device.type == dev
        accs.append(acc)
    cpu, gpu = accs
    assert cpu.n_rows == gpu.n_rows == 4 * 50
    for a, b in ((cpu.A, gpu.A), (cpu.C, gpu.C), (cpu.yy, gpu.yy)):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-12, atol=1e-12)


@needs_cuda
@pytest.mark.parametrize('ec', [False, True])
def test_quantize_on_cuda_stays_there_and_matches_cpu(ec):
    """Every quantized layer's buffers on CUDA; the integers equal the
    CPU run's (documented tolerance: at most 0.5 % of the weights may
    differ by one step, from float64 summation order in A and C), the
    activation scales equal to float32 rounding."""
    qcpu, rcpu = _quantize('cpu', ec)
    qgpu, rgpu = _quantize('cuda', ec)
    lay_cpu = {n: m for n, m in qcpu.named_modules()
               if isinstance(m, QuantizedLayer)}
    lay_gpu = {n: m for n, m in qgpu.named_modules()
               if isinstance(m, QuantizedLayer)}
    assert lay_cpu.keys() == lay_gpu.keys() and lay_cpu
    differ = total = 0
    for name, g in lay_gpu.items():
        for buf_name, buf in g.named_buffers():
            assert buf.device.type == 'cuda', (name, buf_name)
        c = lay_cpu[name]
        diff = (g.qweight.cpu().int() - c.qweight.int()).abs()
        assert int(diff.max()) <= 1, name
        differ += int((diff > 0).sum())
        total += diff.numel()
        torch.testing.assert_close(g.act_scale.cpu(), c.act_scale,
                                   rtol=1e-6, atol=0)
    assert differ <= 0.005 * total, f'{differ} of {total} integers differ'
    x = smooth_images(4, 16, 1)
    with torch.no_grad():
        out_c = qcpu(x)
        out_g = qgpu(x.cuda()).cpu()
    rel = float((out_g - out_c).norm() / out_c.norm())
    assert rel < 1e-2, rel
