"""Error-compensated PTQ in the one pass and replayed from cached module
boundaries gives the INT checkpoint of the full replay from the network
input, bit for bit.

Every OpenMMLab test model goes through ``run_ptq`` (the path of
``tools/ptq.py``) three times: as configured by default (the one pass
for the first layers that run once per pass, then replays from module
boundaries), with ``one_pass=False`` (every layer replays from module
boundaries) and with ``replay_cache_bytes=0`` (every layer's pass starts
at the network input, the behaviour before both).  The saved INT
checkpoints must hold the same tensors, and the quantized models written
again with the same meta must be the same bytes.
"""
import re

import pytest
import torch

from mmquant.checkpoint import save_quantized
from mmquant.checkpoint.container import load_container

# (kind, calibration samples): the sizes the other tests of each model use
MODELS = [('resnet', 16), ('mobilenet', 16), ('retinanet', 8),
          ('faster_rcnn', 8)]
# report fields that describe the run, not its result
RUN_FIELDS = ('replay_from', 'replay_note', 'time_s')


def _layers(report):
    return [{k: v for k, v in lay.items() if k not in RUN_FIELDS}
            for lay in report['layers']]


@pytest.mark.parametrize('kind,samples', MODELS)
def test_one_pass_and_replays_are_bit_exact(ws, tmp_path, kind, samples):
    one = ws.ptq(kind, calib_samples=samples, do_eval=False)
    cached = ws.ptq(kind, calib_samples=samples, do_eval=False,
                    one_pass=False)
    full = ws.ptq(kind, calib_samples=samples, do_eval=False,
                  replay_cache_bytes=0)

    # the one pass served the first layers: all of a classifier's; a
    # detector's backbone and neck, up to its head, whose convs run once
    # per FPN level and replay
    info = one.report['replay']
    froms = {lay['name']: lay['replay_from'] for lay in one.report['layers']
             if lay['replay_from'] is not None}
    names = list(froms)
    assert [froms[n] for n in names[:info['one_pass']]] == \
        ['<one pass>'] * info['one_pass']
    if kind in ('resnet', 'mobilenet'):
        assert info['one_pass'] == len(names), info
        assert info['one_pass_note'] == ''
    else:
        first = names[info['one_pass']]
        assert first.startswith(('bbox_head.', 'rpn_head.')), first
        assert all(n.startswith(('backbone.', 'neck.'))
                   for n in names[:info['one_pass']])
        assert f'{first!r} runs ' in info['one_pass_note'], info
        assert '<one pass>' not in [froms[n]
                                    for n in names[info['one_pass']:]]
    assert info['one_pass_estimated_bytes'] > 0

    # without the one pass the cache was used for most layers; disabled,
    # it never is
    rep, ref = cached.report, full.report
    assert rep['replay']['one_pass'] == 0
    assert rep['replay']['from_module'] > rep['replay']['from_input'], \
        rep['replay']
    assert ref['replay']['from_module'] == ref['replay']['one_pass'] == 0
    assert ref['replay']['cache_peak_bytes'] == 0
    for lay in ref['layers']:
        assert lay['replay_from'] == '<input>'
        assert lay['replay_note'] == \
            'replay cache disabled (replay_cache_bytes=0)'
    modules = dict(cached.qmodel.named_modules())
    for lay in rep['layers'] + one.report['layers']:
        if lay['replay_from'] not in ('<input>', '<one pass>'):
            # a module, or the suffix 'seq[i:]' of an nn.Sequential
            start = re.sub(r'\[\d+:\]$', '', lay['replay_from'])
            assert lay['name'].startswith(start + '.')
            assert start in modules
        elif lay['replay_from'] == '<input>':
            assert lay['replay_note'], lay['name']

    # same integers, scales and everything else in the INT checkpoints
    ref_tensors, ref_meta = load_container(full.int_path)
    for run, one_pass in ((one, True), (cached, False)):
        tensors, meta = load_container(run.int_path)
        assert list(tensors) == list(ref_tensors)
        for name, t in tensors.items():
            assert t.dtype == ref_tensors[name].dtype, name
            assert torch.equal(t, ref_tensors[name]), name
        assert meta['quantizer'].pop('replay_cache_bytes') == 4 << 30
        assert meta['quantizer'].pop('one_pass') is one_pass
        assert _layers(run.report) == _layers(ref)
    assert ref_meta['quantizer'].pop('replay_cache_bytes') == 0
    assert ref_meta['quantizer'].pop('one_pass') is True
    for key in ('quantizer', 'float_checkpoint', 'mode'):
        assert meta[key] == ref_meta[key], key

    # written with the same meta, the models are the same bytes
    blobs = []
    for run in (one, cached, full):
        path = str(tmp_path / 'int.pth')
        save_quantized(run.qmodel, path, {'model': kind})
        with open(path, 'rb') as f:
            blobs.append(f.read())
    assert blobs[0] == blobs[1] == blobs[2]
