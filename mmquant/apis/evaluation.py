"""Evaluate a model with its config's test dataloader and evaluator."""
import copy
from typing import Any, Dict, Optional

import torch
from mmengine.config import Config
from mmengine.evaluator import Evaluator
from mmengine.runner import Runner
from mmengine.utils import ProgressBar
from torch import nn
from torch.utils.data import Subset


def evaluate(model: nn.Module,
             cfg: Config,
             max_samples: Optional[int] = None) -> Dict[str, Any]:
    """Run the config's test loop on ``model`` and return the metrics.

    This is mmengine's ``TestLoop`` (``test_step`` per batch, the config's
    ``test_evaluator``) without building a whole ``Runner``, so that float
    and quantized models can be compared in one process.

    Args:
        model (nn.Module): An mmengine ``BaseModel`` (float or quantized).
        cfg (Config): The config with ``test_dataloader`` and
            ``test_evaluator``.
        max_samples (int, optional): Evaluate only the first samples (for
            quick checks); ``None`` for the whole test set.

    Returns:
        dict: The evaluator's metrics.
    """
    for key in ('test_dataloader', 'test_evaluator'):
        if not cfg.get(key):
            raise ValueError(f'the config has no {key}: cannot evaluate')
    dl_cfg = copy.deepcopy(cfg.test_dataloader)
    if max_samples is not None:
        dataset = Runner.build_dataloader(
            dict(dl_cfg, num_workers=0, persistent_workers=False)).dataset
        metainfo = dataset.metainfo
        dl_cfg['dataset'] = Subset(dataset,
                                   range(min(max_samples, len(dataset))))
        dl_cfg['sampler'] = dict(type='DefaultSampler', shuffle=False)
    else:
        metainfo = None
    if dl_cfg.get('num_workers', 0) == 0:
        dl_cfg['persistent_workers'] = False
    dataloader = Runner.build_dataloader(dl_cfg)
    if metainfo is None:
        metainfo = dataloader.dataset.metainfo
    evaluator = Evaluator(copy.deepcopy(cfg.test_evaluator))
    evaluator.dataset_meta = metainfo
    was_training = model.training
    model.eval()
    bar = ProgressBar(len(dataloader))
    with torch.no_grad():
        for data in dataloader:
            outputs = model.test_step(data)
            evaluator.process(data_samples=outputs, data_batch=data)
            bar.update()
    print()
    model.train(was_training)
    return evaluator.evaluate(len(dataloader.dataset))
