"""One rank of a distributed-calibration test (run as a script).

``python worker.py SPEC RANK WORLD PORT OUT``: joins a gloo process group
of ``WORLD`` ranks on localhost:``PORT`` (none for ``WORLD`` 1), builds
the case of the JSON file ``SPEC``, quantizes this rank's shard of the
calibration batches with :func:`mmquant.quantize` and saves to ``OUT``
the quantized layers' integers and scales, the report and the activation
observers' samples (or the error, for a run that fails).
"""
import datetime
import importlib.util
import json
import os.path as osp
import sys
import traceback
from typing import Any, Dict, List, Tuple

import torch

HERE = osp.dirname(osp.abspath(__file__))


def tiny_case(spec: Dict[str, Any]) -> Tuple[Any, List[Any], Any]:
    """TinyNet of tests/quantization on smooth random images."""
    path = osp.join(osp.dirname(HERE), 'quantization', 'models.py')
    module_spec = importlib.util.spec_from_file_location('models', path)
    models = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(models)
    model = models.init_model(models.TinyNet())
    images = models.smooth_images(spec['samples'], size=16)
    bs = spec['batch_size']
    return model, list(images.split(bs)), None


def det_case(spec: Dict[str, Any]) -> Tuple[Any, List[Any], Any]:
    """An OpenMMLab model of a config file and its float checkpoint."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmquant.apis.ptq import (build_float_model, load_strict,
                                  prepare_calibration)
    cfg = Config.fromfile(spec['config'])
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model = build_float_model(cfg)
    state = torch.load(spec['checkpoint'], map_location='cpu')
    load_strict(model, state.get('state_dict', state), spec['checkpoint'])
    batches, forward_fn = prepare_calibration(
        model, cfg, spec['samples'], seed=0,
        batch_size=spec['batch_size'])
    return model, batches, forward_fn


def main(spec_path: str, rank: int, world: int, port: int,
         out: str) -> int:
    torch.set_num_threads(1)
    with open(spec_path) as f:
        spec = json.load(f)
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group(
            'gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
            world_size=world, timeout=datetime.timedelta(seconds=90))
    import mmquant
    from mmquant.core.stats import StatsAccumulator
    from mmquant.quantization import engine
    from mmquant.quantization.distributed import shard_range
    model, batches, forward_fn = (tiny_case if spec['case'] == 'tiny'
                                  else det_case)(spec)
    start, stop = shard_range(len(batches), rank, world)
    samples: Dict[str, torch.Tensor] = {}
    fit = engine.Calibration.fit_activation

    def recording_fit(self: Any, state: Any) -> Any:
        result = fit(self, state)
        if result is not None and state.observer is not None:
            samples[state.name] = state.observer.samples.clone()
        return result

    engine.Calibration.fit_activation = recording_fit
    if spec.get('crash_rank') == rank:
        update = StatsAccumulator.update_rows
        calls = [0]

        def crash(self: Any, x: Any, y: Any) -> None:
            calls[0] += 1
            if calls[0] == 3:
                raise RuntimeError('injected failure')
            update(self, x, y)

        StatsAccumulator.update_rows = crash
    result: Dict[str, Any] = {}
    try:
        qmodel, report = mmquant.quantize(
            model, batches[start:stop], spec['config_dict'],
            forward_fn=forward_fn, logger=lambda msg: None)
    except Exception as err:  # noqa: BLE001 - reported to the test
        result['error'] = f'{type(err).__name__}: {err}'
        result['traceback'] = traceback.format_exc()
    else:
        from mmquant.nn import QuantizedLayer
        result['layers'] = {
            name: dict(qweight=m.qweight, weight_scale=m.weight_scale,
                       act_scale=m.act_scale, a_bits=m.a_bits)
            for name, m in qmodel.named_modules()
            if isinstance(m, QuantizedLayer)}
        result['report'] = report.to_dict()
        result['samples'] = samples
    torch.save(result, out)
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 1 if 'error' in result else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                  int(sys.argv[4]), sys.argv[5]))
