"""tools/dataset_converters/make_fmnist_det.py on a tiny synthetic
Fashion-MNIST (idx files written by the test, no real data needed).

* the same seed gives the same files byte for byte, another seed other
  files; plain and gzipped idx files give the same output;
* every canvas re-renders exactly from its annotations, and every box is
  the tight box of its own garment's non-zero pixels, inside the canvas,
  with small overlaps and the source image's class;
* train garments come only from training images, val garments only from
  test images, and no source image is used twice;
* pycocotools and mmdet's ``CocoDataset`` read the annotations;
* a missing data folder, too few source images and an existing output
  folder made with other settings are refused with clear errors and leave
  the disk as it was; a failure half-way leaves no trace.

The whole file takes a few seconds.
"""
import gzip
import json
import os
import os.path as osp
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pytest

from .conftest import load_tool

NUM_SOURCE = {'train': 48, 'test': 24}
# 12 x 4 = 48 and 6 x 4 = 24: exactly enough source images.
NUM_TRAIN, NUM_VAL = 12, 6
#: Output split -> the Fashion-MNIST set it must draw from.
SOURCES = {'train': 'train', 'val': 'test'}

det = load_tool('dataset_converters', 'make_fmnist_det.py')


# ------------------------------------------------------------ fixtures --
def _write_idx(path: str, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, 'big') + b''.join(
        int(n).to_bytes(4, 'big') for n in array.shape)
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'wb') as f:
        f.write(data)


def _fake_sets(seed: int = 0) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """28x28 "garments": a bright random rectangle on black. The first
    training image is blank (its garment can never be placed)."""
    rng = np.random.default_rng(seed)
    sets = {}
    for source, count in NUM_SOURCE.items():
        images = np.zeros((count, 28, 28), np.uint8)
        for i in range(count):
            h, w = rng.integers(6, 24, size=2)
            y, x = rng.integers(0, 28 - h), rng.integers(0, 28 - w)
            images[i, y:y + h, x:x + w] = rng.integers(1, 256, (h, w))
        if source == 'train':
            images[0] = 0
        labels = rng.integers(0, 10, count).astype(np.uint8)
        sets[source] = (images, labels)
    return sets


def _write_fmnist(folder: str, sets, gz: bool = False) -> str:
    os.makedirs(folder, exist_ok=True)
    suffix = '.gz' if gz else ''
    for source, (img_name, label_name) in det.IDX_FILES.items():
        images, labels = sets[source]
        _write_idx(osp.join(folder, img_name + suffix), images,
                   det.IMAGES_MAGIC)
        _write_idx(osp.join(folder, label_name + suffix), labels,
                   det.LABELS_MAGIC)
    return folder


@pytest.fixture(scope='module')
def sets():
    return _fake_sets()


@pytest.fixture(scope='module')
def fmnist_dir(tmp_path_factory, sets) -> str:
    return _write_fmnist(str(tmp_path_factory.mktemp('fmnist')), sets)


def _make(out: str, data_dir: str, **kwargs) -> dict:
    kwargs.setdefault('num_train', NUM_TRAIN)
    kwargs.setdefault('num_val', NUM_VAL)
    return det.make_fmnist_det(out, data_dir, progress=False, **kwargs)


@pytest.fixture(scope='module')
def built(tmp_path_factory, fmnist_dir) -> Tuple[str, dict]:
    out = str(tmp_path_factory.mktemp('built') / 'fmnist_det')
    return out, _make(out, fmnist_dir)


def _files(folder: str) -> Dict[str, bytes]:
    """``{relative path: bytes}`` of every file under ``folder``."""
    files = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                files[osp.relpath(path, folder)] = f.read()
    return files


def _coco(out: str, split: str) -> dict:
    with open(osp.join(out, 'annotations', f'{split}.json')) as f:
        return json.load(f)


def _nonzero_box(patch: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(patch)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1)]


# --------------------------------------------------------------- reading --
@pytest.mark.parametrize('gz', [False, True])
def test_read_idx(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = str(tmp_path / ('a.idx' + ('.gz' if gz else '')))
    _write_idx(path, array, det.IMAGES_MAGIC)
    np.testing.assert_array_equal(det.read_idx(path, det.IMAGES_MAGIC),
                                  array)
    with pytest.raises(ValueError, match='magic number 2051, expected 2049'):
        det.read_idx(path, det.LABELS_MAGIC)
    with open(str(tmp_path / 'short'), 'wb') as f:
        f.write(det.IMAGES_MAGIC.to_bytes(4, 'big') + bytes(12) + bytes(5))
    with pytest.raises(ValueError, match='bytes follow'):
        det.read_idx(str(tmp_path / 'short'))


# ----------------------------------------------------------------- output --
def test_deterministic(tmp_path, fmnist_dir, built, sets):
    out, meta = built
    again = str(tmp_path / 'again')
    _make(again, fmnist_dir)
    first = _files(out)
    assert _files(again) == first
    assert {'meta.json', 'annotations/train.json', 'annotations/val.json',
            'train/000001.png', f'val/{NUM_VAL:06d}.png'} <= set(first)
    assert len(first) == 3 + NUM_TRAIN + NUM_VAL

    # gzipped idx files (as Debian ships them) give the same output
    gz_dir = _write_fmnist(str(tmp_path / 'gz'), sets, gz=True)
    from_gz = str(tmp_path / 'from_gz')
    _make(from_gz, gz_dir)
    assert _files(from_gz) == first

    other = str(tmp_path / 'other')
    _make(other, fmnist_dir, seed=1)
    other_files = _files(other)
    for name in ('annotations/train.json', 'annotations/val.json',
                 'train/000001.png'):
        assert other_files[name] != first[name], name


def test_boxes_match_pixels(built, sets):
    out, meta = built
    size = meta['params']['canvas_size']
    for split, source in SOURCES.items():
        images, labels = sets[source]
        coco = _coco(out, split)
        anns = {}
        for ann in coco['annotations']:
            anns.setdefault(ann['image_id'], []).append(ann)
        assert len(coco['images']) == meta['splits'][split]['images']
        for info in coco['images']:
            assert (info['width'], info['height']) == (size, size)
            png = cv2.imread(
                osp.join(out, split, info['file_name']),
                cv2.IMREAD_UNCHANGED)
            assert png.dtype == np.uint8 and png.shape == (size, size)
            canvas = np.zeros_like(png)
            boxes = []
            mine = anns.get(info['id'], [])
            assert 1 <= len(mine) <= 4
            for ann in mine:
                x0, y0, side = ann['paste']
                assert 20 <= side <= 56
                assert 0 <= x0 <= size - side and 0 <= y0 <= size - side
                patch = det.resize_garment(images[ann['fmnist_index']],
                                           side)
                x, y, w, h = _nonzero_box(patch)
                assert ann['bbox'] == [x0 + x, y0 + y, w, h]
                assert min(w, h) >= 4
                assert ann['bbox'][0] + w <= size
                assert ann['bbox'][1] + h <= size
                assert ann['area'] == w * h and ann['iscrowd'] == 0
                assert ann['category_id'] == labels[ann['fmnist_index']] + 1
                region = canvas[y0:y0 + side, x0:x0 + side]
                np.maximum(region, patch, out=region)
                for other in boxes:
                    assert det.box_iou(ann['bbox'], other) <= 0.1
                boxes.append(ann['bbox'])
            # the PNG is exactly the garments, np.maximum-blended
            np.testing.assert_array_equal(png, canvas)


def test_sources_disjoint(built):
    out, meta = built
    for split, source in SOURCES.items():
        coco = _coco(out, split)
        used = [ann['fmnist_index'] for ann in coco['annotations']]
        assert len(used) == len(set(used)), f'{split}: a source used twice'
        assert all(0 <= i < NUM_SOURCE[source] for i in used)
        assert len(used) == meta['splits'][split]['instances'] > 0
    # the blank training image never makes a garment
    assert 0 not in {a['fmnist_index']
                     for a in _coco(out, 'train')['annotations']}


def test_blank_source_dropped(sets):
    images, labels = sets['train']
    rng = np.random.Generator(np.random.PCG64(0))
    sources = iter([0, 1])
    canvas, garments = det.render_canvas(rng, images, labels, sources,
                                         max_objects=1, max_tries=5)
    # image 0 is blank: 5 draws fail, the garment is dropped, and the
    # next garment would take image 1
    assert garments == [] and not canvas.any()
    assert next(sources) == 1
    canvas, garments = det.render_canvas(rng, images, labels, iter([1]),
                                         max_objects=1)
    assert [g['fmnist_index'] for g in garments] == [1] and canvas.any()


def test_coco_readers(built):
    from mmdet.datasets import CocoDataset
    from mmpretrain.datasets import FashionMNIST
    from pycocotools.coco import COCO

    out, meta = built
    assert tuple(FashionMNIST.METAINFO['classes']) == det.CLASSES
    for split, num in (('train', NUM_TRAIN), ('val', NUM_VAL)):
        instances = meta['splits'][split]['instances']
        ann_file = osp.join(out, 'annotations', f'{split}.json')
        coco = COCO(ann_file)
        assert len(coco.getImgIds()) == num
        assert len(coco.getAnnIds()) == instances
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == \
            list(det.CLASSES)
        dataset = CocoDataset(
            data_root=out,
            ann_file=f'annotations/{split}.json',
            data_prefix=dict(img=f'{split}/'),
            metainfo=dict(classes=det.CLASSES),
            test_mode=True,
            pipeline=[])
        assert len(dataset) == num
        infos = [dataset.get_data_info(i) for i in range(len(dataset))]
        assert sum(len(i['instances']) for i in infos) == instances
        assert all(osp.isfile(i['img_path']) for i in infos)
        # mmdet's x2 = x + w: the exclusive right edge
        ann = coco.loadAnns(coco.getAnnIds(imgIds=infos[0]['img_id']))[0]
        x, y, w, h = ann['bbox']
        assert [x, y, x + w, y + h] in [
            i['bbox'] for i in infos[0]['instances']]


def test_same_settings_skip(built, fmnist_dir, capsys):
    out, meta = built
    before = _files(out)
    again = det.make_fmnist_det(out, fmnist_dir, num_train=NUM_TRAIN,
                                num_val=NUM_VAL)
    assert again['skipped'] is True
    assert again['splits'] == meta['splits']
    assert 'nothing to do' in capsys.readouterr().out
    assert _files(out) == before


# ------------------------------------------------------------ bad input --
def test_missing_data_dir(tmp_path):
    out = str(tmp_path / 'out')
    missing = str(tmp_path / 'no-fmnist')
    with pytest.raises(FileNotFoundError,
                       match='no-fmnist: no such folder'):
        _make(out, missing)
    os.makedirs(missing)
    _write_idx(osp.join(missing, 'train-images-idx3-ubyte'),
               np.zeros((1, 28, 28), np.uint8), det.IMAGES_MAGIC)
    with pytest.raises(FileNotFoundError,
                       match='missing train-labels-idx1-ubyte'):
        _make(out, missing)
    assert sorted(os.listdir(tmp_path)) == ['no-fmnist']


def test_too_few_sources(tmp_path, fmnist_dir):
    out = str(tmp_path / 'out')
    with pytest.raises(ValueError, match=r'train split: 13 canvases x up '
                       r'to 4 garments need up to 52 distinct source '
                       r'images, but only 48 exist'):
        _make(out, fmnist_dir, num_train=NUM_TRAIN + 1)
    with pytest.raises(ValueError, match=r'test images for the val split.*'
                       r'need up to 28 .* only 24 exist'):
        _make(out, fmnist_dir, num_val=NUM_VAL + 1)
    assert os.listdir(tmp_path) == []


def test_existing_out_dir(tmp_path, fmnist_dir):
    out = str(tmp_path / 'fmnist_det')
    _make(out, fmnist_dir, num_train=4, num_val=2)
    before = _files(out)
    with pytest.raises(FileExistsError,
                       match=r'seed=0 \(asked 3\).*--overwrite'):
        _make(out, fmnist_dir, num_train=4, num_val=2, seed=3)
    assert _files(out) == before

    # a folder that is not such a dataset is not touched either
    stranger = tmp_path / 'stranger'
    stranger.mkdir()
    (stranger / 'keep.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='no readable meta.json'):
        _make(str(stranger), fmnist_dir)
    assert os.listdir(stranger) == ['keep.txt']

    meta = _make(out, fmnist_dir, num_train=4, num_val=2, seed=3,
                 overwrite=True)
    assert meta['params']['seed'] == 3 and 'skipped' not in meta
    assert _files(out) != before
    assert sorted(os.listdir(tmp_path)) == ['fmnist_det', 'stranger']


def test_failure_leaves_no_trace(tmp_path, fmnist_dir, monkeypatch):
    out = str(tmp_path / 'fmnist_det')
    _make(out, fmnist_dir, num_train=4, num_val=2)
    before = _files(out)
    calls = []

    def broken_write(path, image):
        calls.append(path)
        if len(calls) == 3:
            raise OSError('disk full')
        cv2.imwrite(path, image)

    monkeypatch.setattr(det, '_write_png', broken_write)
    with pytest.raises(OSError, match='disk full'):
        _make(out, fmnist_dir, overwrite=True)
    assert _files(out) == before
    assert os.listdir(tmp_path) == ['fmnist_det']
    with pytest.raises(OSError, match='disk full'):
        calls.clear()
        _make(str(tmp_path / 'new'), fmnist_dir)
    assert os.listdir(tmp_path) == ['fmnist_det']


def test_cli(tmp_path, fmnist_dir, capsys):
    out = str(tmp_path / 'cli')
    args = ['--data-dir', fmnist_dir, '--out', out, '--num-train', '3',
            '--num-val', '2', '--seed', '5']
    assert det.main(args) == 0
    printed = capsys.readouterr().out
    assert 'train: 3 images' in printed and 'val: 2 images' in printed
    assert f'wrote {out} in ' in printed
    assert det.main(args + ['--seed', '6']) == 1
    assert 'pass --overwrite' in capsys.readouterr().err
    too_many = args + ['--out', str(tmp_path / 'cli2'), '--num-val', '7']
    assert det.main(too_many) == 1
    assert 'only 24 exist' in capsys.readouterr().err
    assert os.listdir(tmp_path) == ['cli']
