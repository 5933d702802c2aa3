"""The stock-config test matrix (issue 21): shared data, models and runs.

Every model of the matrix is a config file in ``configs/`` that inherits
the installed package's stock config (``_base_ = 'mmpretrain::...'`` /
``'mmdet::...'``) and changes only the dataset, the class count, the
image size and the batch sizes/workers. Their data paths are placeholders
which the tests fill exactly as a user would, with ``--cfg-options``
(:meth:`StockWorkspace.options`).

The package-scoped ``stock`` fixture (:class:`StockWorkspace`) makes each
expensive thing once and lazily: the tiny data sets, the model that
mmengine's ``Runner`` builds from each config, the float checkpoint saved
from it, and the ``tools/ptq.py`` run of each config.
"""
import copy
import importlib.util
import json
import os.path as osp
import sys
from typing import Any, Dict, List, Optional

import pytest
import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner
from torch import nn

from ..conftest import (LazyCache, _set_bn_stats, make_coco,
                        make_imagenet_folder)

HERE = osp.dirname(osp.abspath(__file__))
CONFIG_DIR = osp.join(HERE, 'configs')
ROOT = osp.dirname(osp.dirname(osp.dirname(HERE)))

#: ``{model: (task, config file)}`` of the whole matrix.
MATRIX = {
    'resnet18': ('cls', 'resnet18_tiny.py'),
    'mobilenet_v2': ('cls', 'mobilenet_v2_tiny.py'),
    'deit_tiny': ('cls', 'deit_tiny_tiny.py'),
    'swin_tiny': ('cls', 'swin_tiny_tiny.py'),
    'convnext_tiny': ('cls', 'convnext_tiny_tiny.py'),
    'retinanet': ('det', 'retinanet_r50_fpn_tiny.py'),
    'faster_rcnn': ('det', 'faster_rcnn_r50_fpn_tiny.py'),
    'mask_rcnn': ('det', 'mask_rcnn_r50_fpn_tiny.py'),
    'detr': ('det', 'detr_r50_tiny.py'),
    'rtmdet_tiny': ('det', 'rtmdet_tiny_tiny.py'),
}

#: Calibration images of every ``tools/ptq.py`` run.
CALIB_SAMPLES = 8


# ------------------------------------------------------------------- data --
def make_coco_with_masks(root: str, splits: Dict[str, int], seed: int = 0,
                         size: int = 64) -> str:
    """:func:`make_coco` plus a polygon ``segmentation`` per object.

    Each object of :func:`make_coco` is a filled axis-aligned rectangle
    whose box is exact, so its exact mask is the polygon of the box's four
    corners (``[x0, y0, x1, y0, x1, y1, x0, y1]``, COCO's flat
    ``[[x, y, ...]]`` format); ``area`` stays the rectangle's.

    Args:
        root (str): Output folder.
        splits (dict): ``{split: number of images}``.
        seed (int): Seed.
        size (int): Image side.

    Returns:
        str: ``root``.
    """
    make_coco(root, splits, seed=seed, size=size)
    for split in splits:
        path = osp.join(root, 'annotations', f'{split}.json')
        with open(path) as f:
            coco = json.load(f)
        for ann in coco['annotations']:
            x0, y0, w, h = ann['bbox']
            x1, y1 = x0 + w, y0 + h
            ann['segmentation'] = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        with open(path, 'w') as f:
            json.dump(coco, f)
    return root


# ---------------------------------------------------------------- helpers --
def load_tool(name: str) -> Any:
    """Import ``tools/<name>.py`` of this repository as a module."""
    path = osp.join(ROOT, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'mmquant_tools_{name}',
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_cfg_options(options: List[str]) -> Dict[str, Any]:
    """``--cfg-options`` strings parsed as the tools parse them."""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *options]).cfg_options


def float_weights(model: nn.Module) -> Dict[str, List[str]]:
    """The weight-bearing modules of a model and their weights.

    A module bears weights if it owns (not through a child) a floating
    ``nn.Parameter`` of two or more dimensions: the ``weight`` of a conv,
    linear or embedding, ``nn.MultiheadAttention``'s ``in_proj_weight``
    ... Only parameters that are *added* to activations rather than
    multiplied with them are not weights: position embeddings, class and
    distillation tokens, relative position bias tables (ViT/DeiT, Swin)
    and DETR-family level embeddings (see :data:`ADDITIVE`).

    Args:
        model (nn.Module): A float model.

    Returns:
        dict: ``{module name: [parameter names]}``.
    """
    found: Dict[str, List[str]] = {}
    for name, module in model.named_modules():
        params = [p for p, t in module.named_parameters(recurse=False)
                  if t.is_floating_point() and t.dim() >= 2
                  and p not in ADDITIVE]
        if params:
            found[name] = params
    return found


#: Seed of the Runner that builds each model's random float weights.
RUNNER_SEED = 0

#: Parameter names that are added to activations (not multiplied): not
#: weights of a layer, nothing to quantize or to report.
ADDITIVE = frozenset({
    'pos_embed', 'cls_token', 'dist_token', 'mask_token',
    'absolute_pos_embed', 'relative_position_bias_table', 'level_embed'})


# -------------------------------------------------------------- workspace --
class StockWorkspace(LazyCache):
    """Package-wide lazy cache of the matrix's data sets, Runner models,
    float checkpoints and ``tools/ptq.py`` runs."""

    @property
    def cls_root(self) -> str:
        """3 classes x (4 train, 4 val) 64x64 images."""
        return self._once('cls_root', lambda: make_imagenet_folder(
            self.tmp('stock_imagenet'), dict(train=4, val=4), size=64))

    @property
    def coco_root(self) -> str:
        """8 train, 4 val 64x64 images with boxes and polygon masks."""
        return self._once('coco_root', lambda: make_coco_with_masks(
            self.tmp('stock_coco'), dict(train=8, val=4)))

    @staticmethod
    def config_path(model: str) -> str:
        return osp.join(CONFIG_DIR, MATRIX[model][1])

    def options(self, model: str) -> List[str]:
        """The ``--cfg-options`` that point a config at the tiny data."""
        task = MATRIX[model][0]
        keys = [f'{split}_dataloader.dataset.data_root'
                for split in ('train', 'val', 'test')]
        if task == 'cls':
            return [f'{k}={self.cls_root}/' for k in keys]
        ann = osp.join(self.coco_root, 'annotations', 'val.json')
        return [f'{k}={self.coco_root}/' for k in keys] + [
            f'val_evaluator.ann_file={ann}',
            f'test_evaluator.ann_file={ann}']

    def cfg(self, model: str) -> Config:
        """The config as ``tools/ptq.py`` reads it (a fresh copy)."""
        cfg = Config.fromfile(self.config_path(model))
        cfg.merge_from_dict(parse_cfg_options(self.options(model)))
        return cfg

    def runner(self, model: str) -> Runner:
        """A fresh ``Runner.from_cfg`` of the config (not cached: the
        models are large)."""
        cfg = self.cfg(model)
        cfg.work_dir = self.tmp(f'runner_{model}')
        cfg.experiment_name = f'stock_runner_{model}_{len(self._cache)}'
        # the stock configs leave the seed to chance (randomness.seed=None):
        # the random weights, and so whether a random detector finds
        # anything to evaluate, would change from run to run
        cfg.randomness = dict(seed=RUNNER_SEED)
        return Runner.from_cfg(cfg)

    def float_ckpt(self, model: str) -> str:
        """The random weights of the model the Runner builds, saved as an
        mmengine checkpoint; BatchNorm statistics are set from the val
        images (random weights with the default statistics make a deep
        ResNet's activations vanish)."""
        def make() -> str:
            runner = self.runner(model)
            torch.manual_seed(0)
            _set_bn_stats(runner.model, Runner.build_dataloader(
                copy.deepcopy(runner.cfg.val_dataloader), seed=0))
            path = osp.join(self.tmp(f'float_{model}'), f'{model}.pth')
            torch.save(dict(state_dict=runner.model.state_dict(),
                            meta=dict(test=True)), path)
            return path
        return self._once(('ckpt', model), make)

    def ptq(self, model: str) -> Dict[str, Any]:
        """``tools/ptq.py CONFIG FLOAT_CKPT --cfg-options ...`` (with
        evaluation); returns its ``report.json`` as a dict."""
        def make() -> Dict[str, Any]:
            work_dir = self.tmp(f'ptq_{model}')
            argv = [osp.join(ROOT, 'tools', 'ptq.py'),
                    self.config_path(model), self.float_ckpt(model),
                    '--work-dir', work_dir,
                    '--calib-samples', str(CALIB_SAMPLES),
                    '--cfg-options', *self.options(model)]
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(sys, 'argv', argv)
                assert load_tool('ptq').main() == 0
            # each run writes into <work dir>/<timestamp>/, `latest` to it
            with open(osp.join(work_dir, 'latest', 'report.json')) as f:
                return json.load(f)
        return self._once(('ptq', model), make)


# --------------------------------------------------------------- fixtures --
@pytest.fixture(scope='package')
def stock(tmp_path_factory: pytest.TempPathFactory) -> StockWorkspace:
    return StockWorkspace(tmp_path_factory)


def first_batch(cfg: Config, count: Optional[int] = None) -> Dict[str, Any]:
    """The first batch of the config's test dataloader."""
    dl = copy.deepcopy(cfg.test_dataloader)
    if count is not None:
        dl['batch_size'] = count
    return next(iter(Runner.build_dataloader(dl, seed=0)))
