"""Export an mmquant INT checkpoint of an OpenMMLab model to ONNX (QDQ).

Example (the bundled Fashion-MNIST example)::

    python tools/ptq.py configs/examples/fmnist_resnet_tiny.py \\
        checkpoints/fmnist_resnet_tiny.pth
    python tools/deploy/export_onnx.py \\
        configs/examples/fmnist_resnet_tiny.py \\
        work_dirs/fmnist_resnet_tiny/fmnist_resnet_tiny_w4a8_int.pth \\
        --out work_dirs/fmnist_resnet_tiny/w4a8.onnx --shape 1 1 28 28

A classifier is exported whole, to its logits; a detector in its
``tensor`` mode (backbone, neck and head raw outputs, as mmdeploy does):
box decoding and NMS stay in Python. The data preprocessor's
normalization (BGR->RGB flip, ``(x - mean) / std``) is part of the graph
unless ``--no-normalize``, so the graph takes the images as the dataset
pipeline packs them (float pixels, NCHW; a detector's batch padding is
not included: give a ``--shape`` divisible by its ``pad_size_divisor``).
See docs/deploy.md.
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional

import torch
from mmengine.config import Config, DictAction


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; ``None`` reads
            ``sys.argv``.

    Returns:
        argparse.Namespace: The options.
    """
    parser = argparse.ArgumentParser(
        description='Export an mmquant INT checkpoint to an ONNX QDQ graph')
    parser.add_argument('config', help='the model config')
    parser.add_argument('checkpoint', help='the INT checkpoint')
    parser.add_argument('--out', required=True, help='the .onnx to write')
    parser.add_argument(
        '--shape', type=int, nargs=4, default=[1, 3, 224, 224],
        metavar=('N', 'C', 'H', 'W'),
        help='input shape traced (default: 1 3 224 224); N stays dynamic '
        'unless --static-batch')
    parser.add_argument('--static-batch', action='store_true',
                        help='fix the batch size to N')
    parser.add_argument('--no-normalize', action='store_true',
                        help='leave the data preprocessor normalization '
                        'out of the graph (it then takes normalized input)')
    parser.add_argument('--no-int4', action='store_true',
                        help='store W2-W4 weights as INT8 (runtimes '
                        'without INT4 DequantizeLinear)')
    parser.add_argument('--verify', action='store_true',
                        help='run onnxruntime and torch on one random '
                        'input and print the largest difference')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy')
    args = parser.parse_args(argv)
    if min(args.shape) <= 0:
        parser.error(f'--shape must be positive, got {args.shape}')
    return args


def main(argv: Optional[List[str]] = None) -> str:
    """Export; returns the path of the written ``.onnx``."""
    args = parse_args(argv)
    import mmquant
    from mmquant.apis.ptq import build_float_model
    from mmquant.deploy import export_onnx, ort_session
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = build_float_model(cfg)
    mmquant.load(model, args.checkpoint)
    model.eval()
    example = torch.rand(*args.shape) * 255
    export_onnx(model, example, args.out,
                dynamic_batch=not args.static_batch, tensor_mode=True,
                normalize=not args.no_normalize, int4=not args.no_int4)
    print(f'wrote {args.out} ({osp.getsize(args.out) / 1024:.1f} KiB)')
    if args.verify:
        import numpy as np
        from mmquant.deploy.onnx_export import _flatten_tensors
        sess = ort_session(args.out)
        outs = sess.run(None, {sess.get_inputs()[0].name: example.numpy()})
        with torch.no_grad():
            inputs = example
            if not args.no_normalize:
                inputs = model.data_preprocessor(
                    dict(inputs=list(example), data_samples=None),
                    False)['inputs']
            refs = _flatten_tensors(model(inputs, None, 'tensor'))
        err = max(
            float(np.abs(o - r.numpy()).max()) for o, r in zip(outs, refs))
        print(f'onnxruntime vs torch on one random input: max |diff| '
              f'{err:.3g}')
    return args.out


if __name__ == '__main__':
    from mmquant.checkpoint.container import CheckpointError
    from mmquant.deploy import ExportError
    try:
        main()
    except (ExportError, CheckpointError) as err:
        sys.exit(f'export_onnx.py: error: {err}')
