"""Error-compensated PTQ replayed from cached module boundaries gives the
INT checkpoint of the full replay from the network input, bit for bit.

Every OpenMMLab test model goes through ``run_ptq`` (the path of
``tools/ptq.py``) twice: with the replay cache (the default) and with
``replay_cache_bytes=0`` (every layer's pass starts at the network input,
the behaviour before the cache).  The saved INT checkpoints must hold the
same tensors, and the quantized models written again with the same meta
must be the same bytes.
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
def test_replay_cache_is_bit_exact(ws, tmp_path, kind, samples):
    cached = ws.ptq(kind, calib_samples=samples, do_eval=False)
    full = ws.ptq(kind, calib_samples=samples, do_eval=False,
                  replay_cache_bytes=0)

    # the cache was used for most layers; disabled, it never is
    rep, ref = cached.report, full.report
    assert rep['replay']['from_module'] > rep['replay']['from_input'], \
        rep['replay']
    assert ref['replay']['from_module'] == 0
    assert ref['replay']['cache_peak_bytes'] == 0
    for lay in ref['layers']:
        assert lay['replay_from'] == '<input>'
        assert lay['replay_note'] == \
            'replay cache disabled (replay_cache_bytes=0)'
    modules = dict(cached.qmodel.named_modules())
    for lay in rep['layers']:
        if lay['replay_from'] != '<input>':
            # a module, or the suffix 'seq[i:]' of an nn.Sequential
            start = re.sub(r'\[\d+:\]$', '', lay['replay_from'])
            assert lay['name'].startswith(start + '.')
            assert start in modules
        else:
            assert lay['replay_note'], lay['name']

    # same integers, scales and everything else in the INT checkpoints
    tensors, meta = load_container(cached.int_path)
    ref_tensors, ref_meta = load_container(full.int_path)
    assert list(tensors) == list(ref_tensors)
    for name, t in tensors.items():
        assert t.dtype == ref_tensors[name].dtype, name
        assert torch.equal(t, ref_tensors[name]), name
    assert meta['quantizer'].pop('replay_cache_bytes') == 4 << 30
    assert ref_meta['quantizer'].pop('replay_cache_bytes') == 0
    for key in ('quantizer', 'float_checkpoint', 'mode'):
        assert meta[key] == ref_meta[key], key
    assert _layers(rep) == _layers(ref)

    # written with the same meta, the two models are the same bytes
    paths = [str(tmp_path / f'{tag}.pth') for tag in ('cached', 'full')]
    for run, path in zip((cached, full), paths):
        save_quantized(run.qmodel, path, {'model': kind})
    with open(paths[0], 'rb') as a, open(paths[1], 'rb') as b:
        assert a.read() == b.read()
