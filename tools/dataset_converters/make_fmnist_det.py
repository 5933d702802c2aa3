"""Build a small COCO-format detection benchmark from Fashion-MNIST.

Every image ("canvas") is a black gray-scale square (96x96 by default)
holding 1 to 4 garments. A garment is one Fashion-MNIST image, resized
(bilinear) to a random side in ``[20, 56]`` px and pasted at a random
position fully inside the canvas with ``np.maximum`` blending. Its box is
the exact tight box of the resized image's non-zero pixels, in COCO
``[x, y, w, h]`` (``x + w`` is the exclusive right pixel edge), and its
category is the garment's Fashion-MNIST class (COCO ids 1..10). Placements
are drawn again while a box overlaps an earlier box of the canvas by an
IoU above 0.1 or is tinier than 4 px; after 20 draws the garment is
dropped.

The ``train`` canvases use only Fashion-MNIST *training* images, the
``val`` canvases only *test* images, and no source image is drawn twice:
each split walks through one random permutation of its source set. Every
garment's annotation records its source (``fmnist_index``) and where the
resized image was pasted (``paste``: ``[x, y, side]``), so both the
disjointness and the boxes can be checked. All randomness comes from one
``numpy.random.Generator(PCG64(seed))``: the output is the same, byte for
byte, for the same seed, settings and generator version.

Output::

    <out>/train/000001.png ...        grayscale PNGs
    <out>/val/000001.png ...
    <out>/annotations/train.json      COCO: images, annotations, categories
    <out>/annotations/val.json
    <out>/meta.json                   generator version, settings, counts

The folder is built next to ``<out>`` under a temporary name and renamed
at the end, so a failure never leaves a half-written dataset. An existing
``<out>`` made with the same settings is kept (nothing to do); one made
with other settings is only replaced with ``--overwrite``.

Input: the four Fashion-MNIST idx files, decompressed
(``data/fashion-mnist/train-images-idx3-ubyte`` ...) or gzipped as
Debian's ``dataset-fashion-mnist`` ships them
(``/usr/share/datasets/fashion-mnist/*-ubyte.gz``).

Example::

    python tools/dataset_converters/make_fmnist_det.py
    python tools/dataset_converters/make_fmnist_det.py \\
        --out data/fmnist_det_s1 --seed 1 --num-train 8000
"""
import argparse
import gzip
import json
import math
import os
import os.path as osp
import shutil
import sys
import tempfile
import time
import zlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

#: Bump when the same settings would give different output.
GENERATOR_VERSION = 1

#: The class names of mmpretrain's ``FashionMNIST.METAINFO['classes']``,
#: in label order; COCO category id = label + 1.
CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
           'Shirt', 'Sneaker', 'Bag', 'Ankle boot')

#: Fashion-MNIST source set -> (images file, labels file).
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
#: Output split -> the Fashion-MNIST set its garments come from.
SPLIT_SOURCES = {'train': 'train', 'val': 'test'}
#: Searched in this order when no data folder is given.
DEFAULT_DATA_DIRS = ('data/fashion-mnist', '/usr/share/datasets/fashion-mnist')
DEFAULT_OUT = 'data/fmnist_det'

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

Box = Tuple[int, int, int, int]


# --------------------------------------------------------------- reading --
def read_idx(path: str, magic: Optional[int] = None) -> np.ndarray:
    """Read an idx file of unsigned bytes (plain or ``.gz``).

    Args:
        path (str): The file; gzip-decompressed when it ends with ``.gz``.
        magic (int, optional): The expected magic number, e.g.
            :data:`IMAGES_MAGIC` or :data:`LABELS_MAGIC`.

    Returns:
        np.ndarray: A read-only ``uint8`` array of the file's shape.

    Raises:
        ValueError: If the file is not a complete idx file of unsigned
            bytes, or its magic number is not ``magic``.
    """
    try:
        if path.endswith('.gz'):
            with gzip.open(path, 'rb') as f:
                data = f.read()
        else:
            with open(path, 'rb') as f:
                data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f'cannot read the idx file {path}: {err}') from err
    if len(data) < 4 or data[:3] != b'\x00\x00\x08':
        raise ValueError(f'{path} is not an idx file of unsigned bytes '
                         f'(its first bytes are {data[:4]!r})')
    if magic is not None and int.from_bytes(data[:4], 'big') != magic:
        raise ValueError(f'{path}: magic number '
                         f'{int.from_bytes(data[:4], "big")}, expected '
                         f'{magic}')
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f'{path}: truncated idx header')
    shape = tuple(
        int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    size = math.prod(shape)
    if len(data) - header != size:
        raise ValueError(f'{path}: the header announces shape {shape} '
                         f'({size} bytes) but {len(data) - header} bytes '
                         'follow')
    return np.frombuffer(data, np.uint8, size, header).reshape(shape)


def find_fmnist_files(data_dir: Optional[str] = None) -> Dict[str, str]:
    """Locate the four Fashion-MNIST idx files.

    A file is taken decompressed when present, else as ``<name>.gz``. All
    four must be in the same folder.

    Args:
        data_dir (str, optional): The folder to read. Defaults to the first
            of :data:`DEFAULT_DATA_DIRS` that has all four files.

    Returns:
        dict: ``{file name (without .gz): path}``.

    Raises:
        FileNotFoundError: If no folder searched has all four files.
    """
    names = [name for pair in IDX_FILES.values() for name in pair]
    folders = [data_dir] if data_dir is not None else list(DEFAULT_DATA_DIRS)
    problems = []
    for folder in folders:
        if not osp.isdir(folder):
            problems.append(f'{folder}: no such folder')
            continue
        found, missing = {}, []
        for name in names:
            for candidate in (name, name + '.gz'):
                if osp.isfile(osp.join(folder, candidate)):
                    found[name] = osp.join(folder, candidate)
                    break
            else:
                missing.append(name)
        if not missing:
            return found
        problems.append(f'{folder}: missing {", ".join(missing)}')
    raise FileNotFoundError(
        'Fashion-MNIST idx files not found (need ' + ', '.join(names) +
        ', decompressed or .gz): ' + '; '.join(problems) +
        '. Install Debian\'s dataset-fashion-mnist package '
        '(/usr/share/datasets/fashion-mnist) or pass --data-dir.')


def load_fmnist(data_dir: Optional[str] = None
                ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Load the Fashion-MNIST training and test sets.

    Args:
        data_dir (str, optional): See :func:`find_fmnist_files`.

    Returns:
        dict: ``{'train' | 'test': (images (N, H, W) uint8,
        labels (N,) uint8)}``.

    Raises:
        FileNotFoundError: If the files are not found.
        ValueError: If a file is malformed or images and labels disagree.
    """
    files = find_fmnist_files(data_dir)
    sets = {}
    for source, (img_name, label_name) in IDX_FILES.items():
        images = read_idx(files[img_name], IMAGES_MAGIC)
        labels = read_idx(files[label_name], LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(
                f'{files[img_name]} holds {len(images)} images but '
                f'{files[label_name]} {len(labels)} labels')
        if labels.size and int(labels.max()) >= len(CLASSES):
            raise ValueError(f'{files[label_name]}: label '
                             f'{int(labels.max())} is not a Fashion-MNIST '
                             f'class (0..{len(CLASSES) - 1})')
        sets[source] = (images, labels)
    return sets


# ------------------------------------------------------------- rendering --
def resize_garment(image: np.ndarray, side: int) -> np.ndarray:
    """Resize a source image to ``side`` x ``side`` (bilinear).

    Args:
        image (np.ndarray): A (H, W) uint8 Fashion-MNIST image.
        side (int): The output side in pixels.

    Returns:
        np.ndarray: The (side, side) uint8 image.
    """
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)


def tight_box(image: np.ndarray) -> Optional[Box]:
    """The tight box of an image's non-zero pixels.

    Args:
        image (np.ndarray): A 2-D array.

    Returns:
        tuple | None: ``(x, y, w, h)`` with exclusive right/bottom edges
        ``x + w`` and ``y + h``, or None if every pixel is zero.
    """
    cols = np.flatnonzero(image.any(axis=0))
    rows = np.flatnonzero(image.any(axis=1))
    if cols.size == 0:
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
            int(rows[-1] - rows[0] + 1))


def box_iou(a: Box, b: Box) -> float:
    """IoU of two ``(x, y, w, h)`` boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def render_canvas(rng: np.random.Generator,
                  images: np.ndarray,
                  labels: np.ndarray,
                  sources: Iterator[int],
                  canvas_size: int = 96,
                  min_side: int = 20,
                  max_side: int = 56,
                  max_objects: int = 4,
                  max_iou: float = 0.1,
                  min_box: int = 4,
                  max_tries: int = 20
                  ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Draw one canvas.

    The number of garments is drawn in ``[1, max_objects]``; each takes
    the next index of ``sources`` (also when it is dropped) and gets up to
    ``max_tries`` draws of side and position.

    Args:
        rng (np.random.Generator): The source of all randomness.
        images (np.ndarray): (N, H, W) uint8 source images.
        labels (np.ndarray): (N,) their classes.
        sources (Iterator[int]): Indices into ``images`` not used yet.
        canvas_size (int): Side of the square canvas.
        min_side (int): Smallest side of a resized garment.
        max_side (int): Largest side of a resized garment.
        max_objects (int): Most garments per canvas.
        max_iou (float): Largest IoU of a box with an earlier box.
        min_box (int): Smallest width and height of a box.
        max_tries (int): Placement draws before a garment is dropped.

    Returns:
        tuple: The (canvas_size, canvas_size) uint8 canvas and one dict
        per placed garment: ``bbox`` ([x, y, w, h] on the canvas),
        ``category_id`` (label + 1), ``fmnist_index`` and ``paste``
        ([x, y, side] of the pasted resized image).
    """
    canvas = np.zeros((canvas_size, canvas_size), np.uint8)
    garments: List[Dict[str, Any]] = []
    boxes: List[Box] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        index = next(sources)
        for _ in range(max_tries):
            side = int(rng.integers(min_side, max_side + 1))
            x0 = int(rng.integers(0, canvas_size - side + 1))
            y0 = int(rng.integers(0, canvas_size - side + 1))
            patch = resize_garment(images[index], side)
            box = tight_box(patch)
            if box is None or box[2] < min_box or box[3] < min_box:
                continue
            box = (x0 + box[0], y0 + box[1], box[2], box[3])
            if any(box_iou(box, other) > max_iou for other in boxes):
                continue
            region = canvas[y0:y0 + side, x0:x0 + side]
            np.maximum(region, patch, out=region)
            boxes.append(box)
            garments.append(
                dict(bbox=list(box), category_id=int(labels[index]) + 1,
                     fmnist_index=int(index), paste=[x0, y0, side]))
            break
    return canvas, garments


def _write_png(path: str, image: np.ndarray) -> None:
    if not cv2.imwrite(path, image):
        raise OSError(f'cannot write the image {path}')


def generate_split(rng: np.random.Generator,
                   images: np.ndarray,
                   labels: np.ndarray,
                   num_images: int,
                   img_dir: str,
                   progress: bool = True,
                   **render_kwargs: Any) -> Dict[str, Any]:
    """Draw ``num_images`` canvases, write their PNGs, build the COCO dict.

    Args:
        rng (np.random.Generator): The source of all randomness.
        images (np.ndarray): (N, H, W) uint8 source images.
        labels (np.ndarray): (N,) their classes.
        num_images (int): Canvases to draw.
        img_dir (str): Existing folder the PNGs are written to.
        progress (bool): Show a progress bar.
        **render_kwargs: Settings passed to :func:`render_canvas`.

    Returns:
        dict: The COCO annotation dict (``info``, ``licenses``,
        ``images``, ``annotations``, ``categories``).
    """
    sources = iter(rng.permutation(len(images)).tolist())
    coco_images, annotations = [], []
    bar = None
    if progress:
        from mmengine.utils import ProgressBar
        bar = ProgressBar(num_images)
    for image_id in range(1, num_images + 1):
        canvas, garments = render_canvas(rng, images, labels, sources,
                                         **render_kwargs)
        file_name = f'{image_id:06d}.png'
        _write_png(osp.join(img_dir, file_name), canvas)
        coco_images.append(
            dict(id=image_id, file_name=file_name, width=canvas.shape[1],
                 height=canvas.shape[0]))
        for garment in garments:
            w, h = garment['bbox'][2:]
            annotations.append(
                dict(id=len(annotations) + 1, image_id=image_id,
                     category_id=garment['category_id'],
                     bbox=garment['bbox'], area=float(w * h), iscrowd=0,
                     fmnist_index=garment['fmnist_index'],
                     paste=garment['paste']))
        if bar is not None:
            bar.update()
    if bar is not None:
        print()
    return dict(
        info=dict(description='Fashion-MNIST garments on detection '
                  'canvases (tools/dataset_converters/make_fmnist_det.py)',
                  version=str(GENERATOR_VERSION)),
        licenses=[],
        images=coco_images,
        annotations=annotations,
        categories=[
            dict(id=i + 1, name=name, supercategory='garment')
            for i, name in enumerate(CLASSES)
        ])


# ---------------------------------------------------------------- output --
def _check_settings(params: Dict[str, Any]) -> None:
    """Raise ValueError naming the first invalid setting."""
    for key in ('num_train', 'num_val'):
        if not isinstance(params[key], int) or params[key] < 0:
            raise ValueError(f'{key} must be an int >= 0, got {params[key]!r}')
    for key in ('canvas_size', 'min_side', 'max_side', 'max_objects',
                'min_box', 'max_tries'):
        if not isinstance(params[key], int) or params[key] < 1:
            raise ValueError(f'{key} must be an int >= 1, got {params[key]!r}')
    if not isinstance(params['seed'], int) or params['seed'] < 0:
        raise ValueError(f'seed must be an int >= 0, got {params["seed"]!r}')
    if not params['min_side'] <= params['max_side'] <= params['canvas_size']:
        raise ValueError(
            'need min_side <= max_side <= canvas_size, got '
            f'{params["min_side"]}, {params["max_side"]}, '
            f'{params["canvas_size"]}')
    if not 0.0 <= params['max_iou'] <= 1.0:
        raise ValueError(
            f'max_iou must be in [0, 1], got {params["max_iou"]!r}')


def _read_meta(out_dir: str) -> Optional[Dict[str, Any]]:
    """``<out_dir>/meta.json``, or None if absent or unreadable."""
    try:
        with open(osp.join(out_dir, 'meta.json'), encoding='utf-8') as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _write_json(path: str, obj: Any, indent: Optional[int] = None) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=indent)
        f.write('\n')


def _differences(old: Optional[Dict[str, Any]],
                 new: Dict[str, Any]) -> str:
    """How an existing dataset's meta differs from the requested one."""
    if old is None:
        return 'it has no readable meta.json'
    old_params = old.get('params')
    if not isinstance(old_params, dict):
        old_params = {}
    diffs = [f'{k}={old_params.get(k)!r} (asked {v!r})'
             for k, v in new['params'].items() if old_params.get(k) != v]
    diffs += [f'{k}={old_params[k]!r} (unknown setting)'
              for k in old_params if k not in new['params']]
    if old.get('version') != new['version']:
        diffs.insert(0, f'generator version {old.get("version")!r} '
                     f'(this is {new["version"]})')
    return 'it has ' + ', '.join(diffs)


def _replace_dir(tmp_dir: str, out_dir: str) -> None:
    """Move ``tmp_dir`` to ``out_dir``, replacing an existing folder."""
    if not osp.exists(out_dir):
        os.rename(tmp_dir, out_dir)
        return
    old = tempfile.mkdtemp(
        prefix=f'.{osp.basename(out_dir)}.old-', dir=osp.dirname(out_dir))
    os.rmdir(old)
    os.rename(out_dir, old)
    try:
        os.rename(tmp_dir, out_dir)
    except OSError:
        os.rename(old, out_dir)
        raise
    if osp.isdir(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.remove(old)


def make_fmnist_det(out_dir: str = DEFAULT_OUT,
                    data_dir: Optional[str] = None,
                    num_train: int = 4000,
                    num_val: int = 1000,
                    seed: int = 0,
                    canvas_size: int = 96,
                    min_side: int = 20,
                    max_side: int = 56,
                    max_objects: int = 4,
                    max_iou: float = 0.1,
                    min_box: int = 4,
                    max_tries: int = 20,
                    overwrite: bool = False,
                    progress: bool = True) -> Dict[str, Any]:
    """Build the detection set into ``out_dir`` (atomically).

    Args:
        out_dir (str): The output folder.
        data_dir (str, optional): Folder of the Fashion-MNIST idx files
            (plain or ``.gz``); defaults to the first of
            :data:`DEFAULT_DATA_DIRS` that has them.
        num_train (int): ``train`` canvases (from the training images).
        num_val (int): ``val`` canvases (from the test images).
        seed (int): Seed of the one random generator.
        canvas_size (int): Side of the square canvases.
        min_side (int): Smallest side of a resized garment.
        max_side (int): Largest side of a resized garment.
        max_objects (int): Most garments per canvas.
        max_iou (float): Largest IoU of a box with an earlier box.
        min_box (int): Smallest width and height of a box.
        max_tries (int): Placement draws before a garment is dropped.
        overwrite (bool): Replace an ``out_dir`` made with other settings.
        progress (bool): Show progress bars and messages.

    Returns:
        dict: The dataset's meta (also ``<out_dir>/meta.json``), plus
        ``'skipped': True`` when ``out_dir`` was already up to date.

    Raises:
        FileExistsError: If ``out_dir`` exists, was made with other
            settings (or is not such a dataset) and ``overwrite`` is off.
        FileNotFoundError: If the Fashion-MNIST files are not found.
        ValueError: If a setting is invalid or a source set has too few
            images for the requested canvases.
    """
    params = dict(seed=seed, num_train=num_train, num_val=num_val,
                  canvas_size=canvas_size, min_side=min_side,
                  max_side=max_side, max_objects=max_objects,
                  max_iou=max_iou, min_box=min_box, max_tries=max_tries)
    _check_settings(params)
    out_dir = osp.normpath(out_dir)

    if osp.exists(out_dir):
        old = _read_meta(out_dir)
        if old is not None and old.get('version') == GENERATOR_VERSION \
                and old.get('params') == params:
            if progress:
                print(f'{out_dir} is up to date (generator version '
                      f'{GENERATOR_VERSION}, seed {seed}, {num_train} '
                      f'train / {num_val} val canvases); nothing to do')
            return dict(old, skipped=True)
        if not overwrite:
            new = dict(version=GENERATOR_VERSION, params=params)
            raise FileExistsError(
                f'{out_dir} already exists and was not made with these '
                f'settings ({_differences(old, new)}); pass --overwrite '
                '(overwrite=True) to replace it, or choose another output '
                'folder')

    sets = load_fmnist(data_dir)
    counts = {'train': num_train, 'val': num_val}
    for split, source in SPLIT_SOURCES.items():
        need = counts[split] * max_objects
        have = len(sets[source][0])
        if need > have:
            raise ValueError(
                f'too few Fashion-MNIST {source} images for the {split} '
                f'split: {counts[split]} canvases x up to {max_objects} '
                f'garments need up to {need} distinct source images, but '
                f'only {have} exist; ask for at most '
                f'{have // max_objects} {split} canvases or fewer garments '
                'per canvas')

    render_kwargs = {
        k: params[k]
        for k in ('canvas_size', 'min_side', 'max_side', 'max_objects',
                  'max_iou', 'min_box', 'max_tries')
    }
    parent = osp.dirname(osp.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(
        prefix=f'.{osp.basename(out_dir)}.tmp-', dir=parent)
    try:
        rng = np.random.Generator(np.random.PCG64(seed))
        os.makedirs(osp.join(tmp_dir, 'annotations'))
        splits = {}
        for split, source in SPLIT_SOURCES.items():
            images, labels = sets[source]
            img_dir = osp.join(tmp_dir, split)
            os.makedirs(img_dir)
            if progress:
                print(f'{split}: {counts[split]} canvases from the '
                      f'Fashion-MNIST {source} images')
            coco = generate_split(rng, images, labels, counts[split],
                                  img_dir, progress, **render_kwargs)
            _write_json(
                osp.join(tmp_dir, 'annotations', f'{split}.json'), coco)
            anns = coco['annotations']
            used = {a['image_id'] for a in anns}
            splits[split] = dict(
                source=source,
                images=len(coco['images']),
                instances=len(anns),
                empty_images=len(coco['images']) - len(used),
                instances_per_class=[
                    sum(a['category_id'] == k + 1 for a in anns)
                    for k in range(len(CLASSES))
                ])
        meta = dict(
            generator='tools/dataset_converters/make_fmnist_det.py',
            version=GENERATOR_VERSION,
            params=params,
            classes=list(CLASSES),
            splits=splits)
        _write_json(osp.join(tmp_dir, 'meta.json'), meta, indent=2)
        os.chmod(tmp_dir, 0o755)
        _replace_dir(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return meta


# ------------------------------------------------------------------- CLI --
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (Sequence[str], optional): Arguments; ``sys.argv[1:]`` if None.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description='Build a COCO-format detection set of Fashion-MNIST '
        'garments on black canvases')
    parser.add_argument(
        '--data-dir',
        help='folder of the Fashion-MNIST idx files, decompressed or .gz '
        f'(default: the first of {", ".join(DEFAULT_DATA_DIRS)} that has '
        'them)')
    parser.add_argument('--out', default=DEFAULT_OUT,
                        help=f'output folder (default: {DEFAULT_OUT})')
    parser.add_argument('--num-train', type=int, default=4000,
                        help='train canvases (default: 4000)')
    parser.add_argument('--num-val', type=int, default=1000,
                        help='val canvases (default: 1000)')
    parser.add_argument('--seed', type=int, default=0,
                        help='random seed (default: 0)')
    parser.add_argument('--canvas-size', type=int, default=96,
                        help='canvas side in pixels (default: 96)')
    parser.add_argument('--min-side', type=int, default=20,
                        help='smallest garment side (default: 20)')
    parser.add_argument('--max-side', type=int, default=56,
                        help='largest garment side (default: 56)')
    parser.add_argument('--max-objects', type=int, default=4,
                        help='most garments per canvas (default: 4)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an output folder made with other '
                        'settings')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build the dataset from the command line and print its counts.

    Args:
        argv (Sequence[str], optional): Arguments; ``sys.argv[1:]`` if None.

    Returns:
        int: The exit status: 0 on success, 1 on a data or settings error.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        meta = make_fmnist_det(
            args.out, args.data_dir, num_train=args.num_train,
            num_val=args.num_val, seed=args.seed,
            canvas_size=args.canvas_size, min_side=args.min_side,
            max_side=args.max_side, max_objects=args.max_objects,
            overwrite=args.overwrite)
    except (OSError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    for split, info in meta['splits'].items():
        print(f'{split}: {info["images"]} images, {info["instances"]} '
              f'instances ({info["empty_images"]} images without any)')
    verb = 'checked' if meta.get('skipped') else 'wrote'
    print(f'{verb} {osp.normpath(args.out)} in {elapsed:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
