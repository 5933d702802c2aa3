"""The report figure and tools/analysis_tools/plot_report.py."""
import json
import re
import os.path as osp
import struct
import subprocess
import sys

import pytest

import mmquant
from mmquant import QuantConfig
from mmquant.visualization import figure_size, plot_report

from .models import TinyNet, init_model, smooth_images

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'plot_report.py')


def png_size(path):
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n'
    return struct.unpack('>II', head[16:24])


def report(**cfg):
    model = init_model(TinyNet())
    data = list(smooth_images(16, 16, 0).split(8))
    _, rep = mmquant.quantize(model, data, QuantConfig(**cfg),
                              logger=lambda msg: None)
    return rep.to_dict()


@pytest.mark.parametrize('cfg, panels', [
    (dict(error_compensation=False), 1),
    (dict(error_compensation=True), 2),
    (dict(error_compensation=True, sensitivity=True), 3),
])
def test_png_has_the_panels_size(tmp_path, cfg, panels):
    rep = report(skip=['pw'], **cfg)
    out = str(tmp_path / 'r.png')
    assert plot_report(rep, out) == out
    # 8 in wide for up to 42 layers, 4.5 in per panel + 1.5, at 100 dpi
    assert figure_size(rep) == (800, 450 * panels + 150)
    assert png_size(out) == figure_size(rep)


def test_mixed_run_shows_the_allocations_measure(tmp_path):
    """A mixed run allocated by the network probe: the sensitivity panel
    shows each layer's relative change of the outputs (what the
    allocation minimised), blank for the fixed input/output layers; with
    allocation_metric='layer', the layers' own errors."""
    import math
    from mmquant.visualization.report_figure import sensitivity_grid
    for metric in ('network', 'layer'):
        rep = report(target_bits=3.5, allocation_metric=metric)
        key, rows, widths, grid = sensitivity_grid(rep['layers'])
        assert widths == [2, 3, 4, 8]
        assert [r['name'] for r in rows] == [
            'stem', 'dw', 'grouped', 'same', 'pw', 'head']
        want = 'sensitivity' if metric == 'layer' else \
            'network_sensitivity'
        assert key == want
        for j, r in enumerate(rows):
            for i, b in enumerate(widths):
                value = (r[key] or {}).get(str(b))
                if value is None:
                    assert math.isnan(grid[i][j])
                    assert r['name'] in ('stem', 'head')
                else:
                    assert grid[i][j] == math.log10(value)
        out = str(tmp_path / f'{metric}.png')
        plot_report(rep, out)
        assert png_size(out) == figure_size(rep)


def test_width_grows_with_layers():
    layers = [dict(name=f'l{i}', w_bits=4, rel_error=0.1)
              for i in range(200)]
    assert figure_size(dict(mode='fast', layers=layers)) == (3000, 600)
    assert figure_size(dict(mode='fast', layers=layers * 2))[0] == 4000


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_tool_writes_next_to_the_report(tmp_path):
    path = tmp_path / 'report.json'
    path.write_text(json.dumps(report(error_compensation=False)))
    res = run_tool(str(path))
    assert res.returncode == 0, res.stderr
    assert png_size(str(tmp_path / 'report.png')) == (800, 600)


@pytest.mark.parametrize('content, match', [
    ('not json', 'Expecting value'),
    (json.dumps(dict(layers=[])), 'is not an mmquant report: it needs '
     '"mode" and a "layers" list'),
    (json.dumps(dict(mode='fast', layers=[1])), r'layers\[0\] is not a '
     'layer record'),
])
def test_tool_refuses_what_is_not_a_report(tmp_path, content, match):
    path = tmp_path / 'x.json'
    path.write_text(content)
    res = run_tool(str(path), '--out', str(tmp_path / 'x.png'))
    assert res.returncode == 2
    assert res.stderr.startswith(f'plot_report: {path}: ')
    assert re.search(match, res.stderr)
    assert not (tmp_path / 'x.png').exists()
