"""Train a float model from an OpenMMLab config (mmpretrain/mmdet).

A minimal version of mmpretrain's ``tools/train.py``: it loads the config,
applies ``--cfg-options``, sets the work dir and runs mmengine's
``Runner.train()``.

Example::

    python tools/train.py configs/examples/fmnist_resnet_tiny.py \
        --work-dir work_dirs/fmnist_resnet_tiny
"""
import argparse
import os.path as osp
from typing import Optional

from mmengine.config import Config, DictAction
from mmengine.runner import Runner


def parse_args() -> argparse.Namespace:
    """Parse the command line.

    Returns:
        argparse.Namespace: ``config``, ``work_dir`` and ``cfg_options``.
    """
    parser = argparse.ArgumentParser(
        description='Train a float OpenMMLab model')
    parser.add_argument('config', help='the training config')
    parser.add_argument('--work-dir', help='folder for logs and checkpoints '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy')
    return parser.parse_args()


def build_train_config(config: str,
                       work_dir: Optional[str] = None,
                       cfg_options: Optional[dict] = None) -> Config:
    """Load a config and apply the command-line overrides.

    Args:
        config (str): Path of the config file.
        work_dir (str, optional): Output folder; defaults to the config's
            ``work_dir`` or ``work_dirs/<config name>``.
        cfg_options (dict, optional): Settings merged into the config.

    Returns:
        Config: The config to hand to ``Runner.from_cfg``.
    """
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('work_dirs',
                                osp.splitext(osp.basename(config))[0])
    return cfg


def main() -> None:
    """Build the runner from the config and train."""
    args = parse_args()
    cfg = build_train_config(args.config, args.work_dir, args.cfg_options)
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
