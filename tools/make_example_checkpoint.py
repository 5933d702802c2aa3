"""Turn a training run's last checkpoint into the bundled float checkpoint.

mmengine's training checkpoints hold optimizer, scheduler and message-hub
state besides the weights. This tool loads one safely (``weights_only``,
via :mod:`mmquant.checkpoint.float_loading`), evaluates the weights with
the config's own test loop (mmengine ``Runner.test()`` with the config's
``test_dataloader`` and ``test_evaluator``), and writes only::

    {'state_dict': ..., 'meta': {config, epochs, test top-1/top-5,
                                 torch / mmpretrain versions}}

Then it loads the written file back strictly and prints its SHA-256.

Examples::

    # after `python tools/train.py configs/examples/fmnist_resnet_tiny.py`
    python tools/make_example_checkpoint.py \
        configs/examples/fmnist_resnet_tiny.py work_dirs/fmnist_resnet_tiny

    # only evaluate the committed file and print its SHA-256
    python tools/make_example_checkpoint.py \
        configs/examples/fmnist_resnet_tiny.py \
        checkpoints/fmnist_resnet_tiny.pth --dry-run

Note: torch.save writes a random ``serialization_id`` into every file, so
two saves of identical weights differ in their bytes (and SHA-256).
"""
import argparse
import copy
import json
import os
import os.path as osp
import tempfile
from collections import OrderedDict
from typing import Any, Dict, Optional

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from mmquant.checkpoint.float_loading import (
    extract_state_dict, load_float_checkpoint, load_float_checkpoint_file,
    sha256_file)
from mmquant.fileio import save_atomic

DEFAULT_OUT = 'checkpoints/fmnist_resnet_tiny.pth'


def parse_args() -> argparse.Namespace:
    """Parse the command line.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description='Make the bundled float checkpoint from a training run')
    parser.add_argument('config', help='the training config')
    parser.add_argument('checkpoint', help='a checkpoint file, or a work '
                        'dir whose `last_checkpoint` names one')
    parser.add_argument('--out', default=DEFAULT_OUT,
                        help=f'output file (default {DEFAULT_OUT})')
    parser.add_argument('--work-dir', help='folder for the test logs '
                        '(default: a temporary folder)')
    parser.add_argument('--dry-run', action='store_true',
                        help='evaluate and print, write nothing')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy')
    return parser.parse_args()


def resolve_checkpoint(path: str) -> str:
    """Return the checkpoint file a path stands for.

    Args:
        path (str): A checkpoint file, or an mmengine work dir holding a
            ``last_checkpoint`` file (written by ``CheckpointHook``).

    Returns:
        str: The checkpoint file.

    Raises:
        FileNotFoundError: If no checkpoint can be found.
    """
    if osp.isfile(path):
        return path
    last = osp.join(path, 'last_checkpoint')
    if osp.isfile(last):
        with open(last) as f:
            name = f.read().strip()
        candidates = [name, osp.join(path, osp.basename(name))]
        for candidate in candidates:
            if osp.isfile(candidate):
                return candidate
    raise FileNotFoundError(f'no checkpoint file at {path!r} (and no '
                            'usable last_checkpoint in it)')


def clean_state_dict(state_dict: Dict[str, Any]) -> 'OrderedDict':
    """Copy a state dict into compact, standalone CPU tensors.

    Each tensor is cloned so that ``torch.save`` writes only its own
    elements (never a larger storage it might view).

    Args:
        state_dict (dict): Names to tensors.

    Returns:
        OrderedDict: The copy, keeping ``_metadata`` (module versions).
    """
    out = OrderedDict(
        (k, v.detach().cpu().clone().contiguous()
         if isinstance(v, torch.Tensor) else v)
        for k, v in state_dict.items())
    metadata = getattr(state_dict, '_metadata', None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def evaluate_state_dict(cfg: Config, state_dict: Dict[str, Any],
                        work_dir: Optional[str] = None) -> Dict[str, float]:
    """Run the config's test loop on the given weights.

    Args:
        cfg (Config): The config (``model``, ``test_dataloader``,
            ``test_evaluator``, ``test_cfg``).
        state_dict (dict): Weights, loaded with ``strict=True``.
        work_dir (str, optional): Folder for the runner's logs; a
            temporary one when ``None``.

    Returns:
        dict: The evaluator's metrics, e.g. ``accuracy/top1``.
    """
    cfg = copy.deepcopy(cfg)
    cfg.load_from = None
    cfg.resume = False
    with tempfile.TemporaryDirectory() as tmp:
        cfg.work_dir = work_dir or tmp
        runner = Runner.from_cfg(cfg)
        runner.model.load_state_dict(state_dict, strict=True)
        metrics = runner.test()
    return {k: float(v) for k, v in metrics.items()}


def build_meta(config: str, epochs: Optional[int],
               metrics: Dict[str, float]) -> Dict[str, Any]:
    """Build the small, JSON-able ``meta`` dict of the output file.

    Args:
        config (str): The config path (as given).
        epochs (int, optional): Training epochs of the checkpoint.
        metrics (dict): Test metrics (``accuracy/top1`` ...).

    Returns:
        dict: The meta data.
    """
    import mmpretrain
    meta = dict(config=config.replace(os.sep, '/'), epochs=epochs)
    if 'accuracy/top1' in metrics:
        meta.update(
            test_top1=round(metrics['accuracy/top1'], 4),
            test_top5=round(metrics.get('accuracy/top5', float('nan')), 4))
    meta['test_metrics'] = {k: round(float(v), 4)
                            for k, v in metrics.items()
                            if isinstance(v, (int, float))}
    meta.update(torch=str(torch.__version__),
                mmpretrain=str(mmpretrain.__version__))
    if any(k.startswith('coco/') for k in metrics):
        import mmdet
        meta['mmdet'] = str(mmdet.__version__)
    # Plain JSON types only (``torch.__version__`` is a str subclass that
    # weights-only loading refuses).
    return json.loads(json.dumps(meta))


def main() -> None:
    """Convert, evaluate, save, verify and print the SHA-256."""
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    src = resolve_checkpoint(args.checkpoint)
    checkpoint = load_float_checkpoint_file(src)
    state_dict = clean_state_dict(extract_state_dict(checkpoint))
    src_meta = checkpoint.get('meta') or {}
    epochs = src_meta.get('epoch', src_meta.get('epochs'))
    if epochs is None:
        epochs = cfg.get('train_cfg', {}).get('max_epochs')
    del checkpoint

    metrics = evaluate_state_dict(cfg, state_dict, args.work_dir)
    meta = build_meta(args.config, epochs, metrics)
    print(f'source: {src}')
    print('meta: ' + json.dumps(meta))
    if args.dry_run:
        print(f'sha256 of {src}: {sha256_file(src)}')
        return

    # temp file + rename: an interrupted save never leaves a partial file
    save_atomic({'state_dict': state_dict, 'meta': meta}, args.out)
    reloaded = load_float_checkpoint(args.out)
    if list(reloaded) != list(state_dict) or not all(
            torch.equal(reloaded[k], state_dict[k]) for k in state_dict):
        raise RuntimeError(f'{args.out} does not read back identically')
    size = osp.getsize(args.out)
    print(f'wrote {args.out} ({size / 2**20:.2f} MiB)')
    print(f'sha256 {sha256_file(args.out)}  {args.out}')


if __name__ == '__main__':
    main()
