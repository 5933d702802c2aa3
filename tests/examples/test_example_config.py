"""Fast checks of the bundled Fashion-MNIST example (< 20 s on 2 cores).

The config builds, the committed float checkpoint loads strictly and
safely, its SHA-256 is the one documented in ``checkpoints/README.md``,
and on 256 real Fashion-MNIST test images, read through the config's own
test dataloader, the float model reaches its documented accuracy (minus 3
points).
"""
import copy
import gzip
import os.path as osp
import re
import shutil
from typing import Iterator

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from torch.utils.data import Subset

from mmquant.checkpoint.float_loading import (load_float_checkpoint,
                                              load_float_checkpoint_file,
                                              sha256_file)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'examples', 'fmnist_resnet_tiny.py')
CHECKPOINT = osp.join(ROOT, 'checkpoints', 'fmnist_resnet_tiny.pth')
CKPT_README = osp.join(ROOT, 'checkpoints', 'README.md')
DEBIAN_DATA = '/usr/share/datasets/fashion-mnist'
FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
         't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
# Float top-1 of the committed checkpoint on the full 10k test set, as
# measured by mmengine's test loop (see checkpoints/README.md).
MEASURED_TOP1 = 90.27
NUM_IMAGES = 256


def _has_data(folder: str, suffix: str = '') -> bool:
    """Whether ``folder`` holds the four Fashion-MNIST files."""
    return all(osp.isfile(osp.join(folder, f + suffix)) for f in FILES)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A folder with the decompressed Fashion-MNIST files.

    ``data/fashion-mnist`` of the repository when prepared; else the
    Debian package's ``.gz`` files are decompressed into a temporary
    folder (mmpretrain's FashionMNIST only reads decompressed files).
    """
    local = osp.join(ROOT, 'data', 'fashion-mnist')
    if _has_data(local):
        yield local
        return
    if not _has_data(DEBIAN_DATA, '.gz'):
        pytest.skip(f'Fashion-MNIST not found in {local} or {DEBIAN_DATA} '
                    '(apt-get install dataset-fashion-mnist)')
    folder = tmp_path_factory.mktemp('fashion-mnist')
    for name in FILES:
        with gzip.open(osp.join(DEBIAN_DATA, name + '.gz'), 'rb') as src, \
                open(osp.join(folder, name), 'wb') as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    yield str(folder)


@pytest.fixture(scope='module')
def cfg() -> Config:
    """The example config, with mmpretrain as default scope."""
    config = Config.fromfile(CONFIG)
    init_default_scope(config.default_scope)
    return config


def _build_model(cfg: Config) -> torch.nn.Module:
    """Build the config's float model (random weights), in eval mode."""
    from mmpretrain.registry import MODELS
    return MODELS.build(copy.deepcopy(cfg.model)).eval()


def test_config_builds_model(cfg: Config) -> None:
    model = _build_model(cfg)
    assert cfg.default_scope == 'mmpretrain'
    assert model.head.num_classes == 10
    assert cfg.model.data_preprocessor.num_classes == 10
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20
    params = sum(p.numel() for p in model.parameters())
    assert 200_000 <= params <= 700_000
    assert cfg.quantizer.type == 'mmquant.BitSplitQuantizer'
    assert 'mmquant' in cfg.custom_imports.imports
    calib = cfg.calib_dataloader
    assert calib.dataset.split == 'train'
    assert calib.dataset.pipeline == cfg.test_dataloader.dataset.pipeline
    assert calib.batch_size == 32 and calib.num_workers == 0
    assert tuple(cfg.test_evaluator.topk) == (1, 5)


def test_checkpoint_loads_strictly(cfg: Config) -> None:
    assert osp.getsize(CHECKPOINT) < 2 * 2**20
    full = load_float_checkpoint_file(CHECKPOINT)
    assert sorted(full) == ['meta', 'state_dict']
    assert full['meta']['test_top1'] == pytest.approx(MEASURED_TOP1)
    state = load_float_checkpoint(CHECKPOINT)
    model = _build_model(cfg)
    model.load_state_dict(state, strict=True)


def test_checkpoint_sha256_documented() -> None:
    with open(CKPT_README) as f:
        text = f.read()
    documented = set(re.findall(r'\b[0-9a-f]{64}\b', text))
    assert documented, 'checkpoints/README.md names no sha256'
    assert sha256_file(CHECKPOINT) in documented


def test_float_accuracy_on_real_test_images(cfg: Config,
                                            data_root: str) -> None:
    dl_cfg = copy.deepcopy(cfg.test_dataloader)
    dl_cfg.dataset.data_root = data_root
    dl_cfg.update(num_workers=0, persistent_workers=False, batch_size=128)
    dataset = Runner.build_dataloader(dl_cfg).dataset
    assert len(dataset) == 10000
    step = len(dataset) // NUM_IMAGES
    indices = list(range(0, step * NUM_IMAGES, step))
    dl_cfg.dataset = Subset(dataset, indices)
    dl_cfg.sampler = dict(type='DefaultSampler', shuffle=False)
    loader = Runner.build_dataloader(dl_cfg)

    model = _build_model(cfg)
    model.load_state_dict(load_float_checkpoint(CHECKPOINT), strict=True)
    correct = total = 0
    with torch.no_grad():
        for batch in loader:
            for sample in model.test_step(batch):
                correct += int(sample.pred_label == sample.gt_label)
                total += 1
    assert total == NUM_IMAGES
    top1 = 100.0 * correct / total
    assert top1 >= MEASURED_TOP1 - 3.0, (top1, MEASURED_TOP1)
