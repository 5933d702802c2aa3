"""Calibration data and forward functions for OpenMMLab models.

Calibration batches go through the model's own ``data_preprocessor``
once, are kept in memory, and are fed to the model in ``mode='tensor'``
(no post-processing). Two-stage detectors get their proposals from the
*float* RPN, computed once, so that the rows of every RoI-head layer are
the same RoIs in the float and in the quantized network (which the
error-compensated mode needs); the RPN's own layers still run.
"""
import copy
from typing import Any, Callable, Dict, List, Optional

import torch
from mmengine.config import Config, ConfigDict
from mmengine.dataset import pseudo_collate
from mmengine.logging import MMLogger
from mmengine.registry import DATASETS, FUNCTIONS
from mmengine.utils import ProgressBar
from torch import nn
from torch.utils.data import DataLoader, Subset


def calib_dataloader_cfg(cfg: Config) -> ConfigDict:
    """Pick the dataloader config calibration reads from.

    ``calib_dataloader`` when the config has one; else the train
    dataloader with the test pipeline (no augmentation); else the val
    dataloader.

    Args:
        cfg (Config): The OpenMMLab config.

    Returns:
        ConfigDict: A dataloader config (a copy).
    """
    if cfg.get('calib_dataloader'):
        return copy.deepcopy(cfg.calib_dataloader)
    test_pipeline = _pipeline_of(cfg.get('test_dataloader'))
    train = cfg.get('train_dataloader')
    if train and test_pipeline is not None and \
            _pipeline_of(train) is not None:
        dl = copy.deepcopy(train)
        dl.dataset.pipeline = copy.deepcopy(test_pipeline)
        # mmdet's train set drops images without boxes; calibration does
        # not need boxes, and the test pipeline packs none.
        return dl
    for key in ('val_dataloader', 'test_dataloader'):
        if cfg.get(key):
            return copy.deepcopy(cfg[key])
    raise ValueError('the config defines no calib_dataloader, '
                     'train_dataloader, val_dataloader or test_dataloader '
                     'to calibrate on')


def _pipeline_of(dl: Optional[Dict[str, Any]]) -> Optional[list]:
    if not dl or 'dataset' not in dl:
        return None
    return dl['dataset'].get('pipeline')


def build_dataset(dataset_cfg: Any, what: str = 'calibration') -> Any:
    """Build a dataset from its config, refusing an empty one.

    Args:
        dataset_cfg (dict | Dataset): A dataset config, or a dataset
            (returned as it is once checked).
        what (str): Which dataset, for the message. Defaults to
            ``'calibration'``.

    Returns:
        Dataset: The dataset.

    Raises:
        ValueError: If the dataset is empty (the message names its
            ``data_root``, ``ann_file`` and ``data_prefix``).
    """
    where = describe_dataset(dataset_cfg)
    empty = (f'the {what} dataset is empty{where}: check the '
             "dataloader's data_root/ann_file/data_prefix")
    if what == 'calibration':
        empty += (" (and, for mmdet's training set, filter_cfg: images "
                  'without boxes are dropped), or set a calib_dataloader')
    try:
        dataset = DATASETS.build(dataset_cfg) if isinstance(
            dataset_cfg, dict) else dataset_cfg
    except ValueError as err:
        # mmengine's BaseDataset serializes its data list with
        # np.concatenate, which fails this way on an empty list.
        if 'need at least one array to concatenate' in str(err):
            raise ValueError(empty) from err
        raise
    if len(dataset) == 0:
        raise ValueError(empty)
    return dataset


def build_calib_dataloader(dl_cfg: Dict[str, Any],
                           num_samples: int,
                           seed: int = 0,
                           batch_size: Optional[int] = None) -> DataLoader:
    """Build a loader over ``num_samples`` random images of a dataset.

    Args:
        dl_cfg (dict): A dataloader config (``dataset``, ``batch_size``,
            ``collate_fn`` ...); ``dataset`` may be a built dataset.
        num_samples (int): Images to draw (all if the set is smaller),
            at least 1.
        seed (int): Seed of the draw.
        batch_size (int, optional): Overrides the config's batch size;
            at least 1.

    Returns:
        DataLoader: An unshuffled loader over the drawn subset.

    Raises:
        ValueError: If the dataset is empty, or ``num_samples`` or
            ``batch_size`` is not a whole number >= 1.
    """
    for name, value in (('num_samples', num_samples),
                        ('batch_size', batch_size)):
        if value is None and name == 'batch_size':
            continue
        if isinstance(value, bool) or not isinstance(value, int) or \
                value < 1:
            raise ValueError(f'{name} must be a whole number >= 1, got '
                             f'{value!r}')
    dataset = build_dataset(dl_cfg['dataset'])
    gen = torch.Generator().manual_seed(seed)
    count = min(num_samples, len(dataset))
    indices = torch.randperm(len(dataset), generator=gen)[:count].tolist()
    collate = dl_cfg.get('collate_fn', dict(type='pseudo_collate'))
    collate_fn = pseudo_collate
    if isinstance(collate, dict):
        collate = dict(collate)
        collate_fn = FUNCTIONS.get(collate.pop('type'))
        if collate:
            import functools
            collate_fn = functools.partial(collate_fn, **collate)
    if batch_size is None:
        batch_size = dl_cfg.get('batch_size', 1)
    return DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=dl_cfg.get('num_workers', 0),
        collate_fn=collate_fn)


def describe_dataset(dataset_cfg: Any) -> str:
    """`` (CocoDataset, ann_file=..., data_root=...)`` for messages.

    Args:
        dataset_cfg (dict | Dataset): A dataset config or a dataset.

    Returns:
        str: The description, with a leading space.
    """
    if not isinstance(dataset_cfg, dict):
        return f' ({type(dataset_cfg).__name__})'
    parts = [str(dataset_cfg.get('type', '?'))]
    for key in ('data_root', 'ann_file', 'data_prefix'):
        if dataset_cfg.get(key):
            parts.append(f'{key}={dataset_cfg[key]!r}')
    return f" ({', '.join(parts)})"


def preprocess_batches(model: nn.Module, dataloader: DataLoader
                       ) -> List[Dict[str, Any]]:
    """Run every batch through the model's ``data_preprocessor`` once.

    Args:
        model (nn.Module): An mmengine ``BaseModel``.
        dataloader (DataLoader): The calibration loader.

    Returns:
        list[dict]: ``dict(inputs=..., data_samples=...)`` per batch.

    Raises:
        ValueError: If the loader yields nothing.
    """
    logger = MMLogger.get_current_instance()
    batches = []
    total = len(dataloader.dataset)
    logger.info(f'mmquant: loading {total} calibration images')
    bar = ProgressBar(total)
    with torch.no_grad():
        for data in dataloader:
            batches.append(model.data_preprocessor(data, False))
            for _ in range(_len(data)):
                bar.update()
    print()
    if not batches:
        raise ValueError('the calibration dataloader yielded no batch')
    return batches


def _len(data: Any) -> int:
    if isinstance(data, dict) and 'inputs' in data:
        return len(data['inputs'])
    return 1


def build_forward_fn(model: nn.Module,
                     batches: List[Dict[str, Any]]
                     ) -> Callable[[nn.Module, Dict[str, Any]], Any]:
    """The calibration forward of an OpenMMLab model.

    Classifiers and one-stage detectors run ``model(inputs, data_samples,
    mode='tensor')``. Two-stage detectors (``rpn_head`` + ``roi_head``)
    run the backbone, neck and RPN head, then the RoI head on proposals of
    the float model, which are computed here once per batch and stored in
    the batch dicts.

    Args:
        model (nn.Module): The float model.
        batches (list[dict]): The preprocessed batches (modified in place
            for two-stage detectors: a ``proposals`` entry is added).

    Returns:
        callable: ``forward_fn(model, batch)``.
    """
    if not (hasattr(model, 'rpn_head') and hasattr(model, 'roi_head')
            and getattr(model, 'with_rpn', False)):
        return _tensor_forward
    with torch.no_grad():
        was_training = model.training
        model.eval()
        for batch in batches:
            feats = model.extract_feat(batch['inputs'])
            batch['proposals'] = model.rpn_head.predict(
                feats, batch['data_samples'], rescale=False)
        model.train(was_training)
    return _two_stage_forward


def _tensor_forward(model: nn.Module, batch: Dict[str, Any]) -> Any:
    return model(batch['inputs'], batch['data_samples'], mode='tensor')


def _two_stage_forward(model: nn.Module, batch: Dict[str, Any]) -> Any:
    feats = model.extract_feat(batch['inputs'])
    rpn_outs = model.rpn_head(feats)
    roi_outs = model.roi_head.forward(feats, batch['proposals'],
                                      batch['data_samples'])
    return rpn_outs, roi_outs
