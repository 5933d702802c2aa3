"""Evaluate an mmquant INT checkpoint with the config's test loop.

Example::

    python tools/test.py configs/bitsplit/retinanet_r50_fpn_w4a8_coco.py \
        work_dirs/ptq/retinanet_r50_fpn_w4a8_coco_int.pth

The config's ``model`` may be the float model (it is wrapped in
``mmquant.QuantizedModel`` here) or already an ``mmquant.QuantizedModel``.
This runs mmengine's own ``Runner.test()`` with the config's evaluator, the
same path as mmdet's or mmpretrain's ``tools/test.py``.
"""
import argparse
import os.path as osp
import sys
from typing import Any, Dict, List, Optional

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmquant.apis.ptq import is_quantized_model_cfg  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Evaluate an mmquant INT checkpoint')
    parser.add_argument('config', help='the model config')
    parser.add_argument('checkpoint', help='the INT checkpoint')
    parser.add_argument('--work-dir', help='folder for logs and results')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy')
    return parser.parse_args(argv)


def build_test_config(cfg: Config, checkpoint: str) -> Config:
    """Wrap the config's model in ``mmquant.QuantizedModel``.

    Args:
        cfg (Config): The config.
        checkpoint (str): The INT checkpoint.

    Returns:
        Config: The config to hand to ``Runner.from_cfg``.
    """
    model = cfg.model
    if not is_quantized_model_cfg(model):
        model = dict(type='mmquant.QuantizedModel', architecture=model)
    model['int_checkpoint'] = checkpoint
    cfg.model = model
    cfg.load_from = None
    custom = cfg.get('custom_imports', dict(imports=[]))
    if 'mmquant' not in custom.get('imports', []):
        custom = dict(custom, imports=list(custom.get('imports', [])) +
                      ['mmquant'])
        cfg.custom_imports = custom
    return cfg


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the test loop; returns the evaluator's metrics."""
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg = build_test_config(cfg, args.checkpoint)
    runner = Runner.from_cfg(cfg)
    return runner.test()


if __name__ == '__main__':
    main()
