"""Evaluate a model with its config's test dataloader and evaluator.

:func:`evaluate` returns the evaluator's metrics; :func:`to_jsonable`
turns them (tensors, numpy scalars) into values a JSON file can hold.
"""
import copy
from typing import Any, Dict, List, Optional

import torch
from mmengine.config import Config
from mmengine.evaluator import Evaluator
from mmengine.runner import Runner
from mmengine.utils import ProgressBar
from torch import nn
from torch.utils.data import Subset


def evaluate(model: nn.Module,
             cfg: Config,
             max_samples: Optional[int] = None,
             dataset: Optional[Any] = None) -> Dict[str, Any]:
    """Run the config's test loop on ``model`` and return the metrics.

    This is mmengine's ``TestLoop`` (``test_step`` per batch, the config's
    ``test_evaluator``) without building a whole ``Runner``, so that float
    and quantized models can be compared in one process.

    Args:
        model (nn.Module): An mmengine ``BaseModel`` (float or quantized).
        cfg (Config): The config with ``test_dataloader`` and
            ``test_evaluator``.
        max_samples (int, optional): Evaluate only the first samples (for
            quick checks, at least 1); ``None`` for the whole test set.
        dataset (Dataset, optional): The test dataset, already built from
            ``cfg.test_dataloader.dataset`` (so that a run builds it once);
            ``None`` builds it here.

    Returns:
        dict: The evaluator's metrics.

    Raises:
        ValueError: If the config has no test dataloader or evaluator, if
            ``max_samples`` is not a whole number >= 1, or the test set is
            empty.
    """
    for key in ('test_dataloader', 'test_evaluator'):
        if not cfg.get(key):
            raise ValueError(f'the config has no {key}: cannot evaluate')
    if max_samples is not None and (
            isinstance(max_samples, bool) or not isinstance(max_samples, int)
            or max_samples < 1):
        raise ValueError('max_samples must be a whole number >= 1 (None '
                         f'for the whole test set), got {max_samples!r}')
    dl_cfg = copy.deepcopy(cfg.test_dataloader)
    if dataset is None:
        dataset = Runner.build_dataloader(
            dict(dl_cfg, num_workers=0, persistent_workers=False)).dataset
    if len(dataset) == 0:
        raise ValueError('the test dataset is empty: check the '
                         "test_dataloader's data_root/ann_file/data_prefix")
    metainfo = dataset.metainfo
    subset_ids = None
    if max_samples is not None:
        count = min(max_samples, len(dataset))
        dl_cfg['dataset'] = Subset(dataset, range(count))
        dl_cfg['sampler'] = dict(type='DefaultSampler', shuffle=False)
        subset_ids = _image_ids(dataset, count)
    else:
        dl_cfg['dataset'] = dataset
    if dl_cfg.get('num_workers', 0) == 0:
        dl_cfg['persistent_workers'] = False
    dataloader = Runner.build_dataloader(dl_cfg)
    evaluator = Evaluator(copy.deepcopy(cfg.test_evaluator))
    evaluator.dataset_meta = metainfo
    if subset_ids is not None:
        _restrict_image_ids(evaluator, subset_ids)
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


def to_jsonable(value: Any) -> Any:
    """Tensors and numpy scalars as Python numbers, recursively.

    Args:
        value (Any): Metrics as :func:`evaluate` returns them, or dicts and
            lists of them.

    Returns:
        Any: ``value`` with dict keys as strings, tuples as lists and
        every one-element tensor or numpy scalar as its Python number;
        other values are returned unchanged.
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, 'item'):
        return value.item()
    return value


def _image_ids(dataset: Any, count: int) -> Optional[List[Any]]:
    """The ``img_id`` of the first ``count`` samples, if they have one."""
    if not hasattr(dataset, 'get_data_info'):
        return None
    ids = [dataset.get_data_info(i).get('img_id') for i in range(count)]
    return None if any(i is None for i in ids) else ids


def _restrict_image_ids(evaluator: Evaluator, img_ids: List[Any]) -> None:
    """Score COCO-style metrics on the evaluated images only.

    ``CocoMetric`` (and its relatives) score the predictions against
    *every* image of their annotation file unless told otherwise
    (``img_ids``); on a subset the images never predicted would count as
    all-missed and the mAP would be wrong.
    """
    for metric in evaluator.metrics:
        if hasattr(metric, 'img_ids') and metric.img_ids is None:
            metric.img_ids = list(img_ids)
