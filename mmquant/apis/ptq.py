"""The PTQ pipeline behind ``tools/ptq.py``.

config + float checkpoint -> calibration batches -> quantizer ->
(optional) float and quantized evaluation -> INT checkpoint + report.
"""
import copy
import os
import os.path as osp
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import init_default_scope
from torch import nn

from mmquant.checkpoint.float_loading import (load_float_checkpoint,
                                              sha256_file)
from mmquant.checkpoint.int_model import save_quantized
from mmquant.quantizers import BaseQuantizer
from mmquant.registry import MODELS
from .calibration import (build_calib_dataloader, build_forward_fn,
                          calib_dataloader_cfg, preprocess_batches)
from .evaluation import evaluate

#: Quantizer used when the config has no ``quantizer`` key.
DEFAULT_QUANTIZER = dict(type='mmquant.BitSplitQuantizer')


def is_quantized_model_cfg(model_cfg: Any) -> bool:
    """Whether a model config is an ``mmquant.QuantizedModel`` wrapper."""
    return isinstance(model_cfg, dict) and model_cfg.get('type') in (
        'mmquant.QuantizedModel', 'QuantizedModel')


def float_model_cfg(cfg: Config) -> Dict[str, Any]:
    """The float model's config, as mmengine's ``Runner`` would build it.

    The Runner merges a top-level ``data_preprocessor`` (where mmpretrain's
    and many mmdet configs define it) into ``model`` unless the model has
    its own (``model.setdefault('data_preprocessor', ...)``); without that
    merge a classifier gets a default preprocessor that neither
    normalises nor converts BGR to RGB. A ``cfg.model`` of type
    ``mmquant.QuantizedModel`` contributes its ``architecture`` (with the
    wrapper's ``data_preprocessor`` as the next default).

    Args:
        cfg (Config): The config.

    Returns:
        dict: A copy of the float model's config.
    """
    model_cfg = copy.deepcopy(cfg.model)
    preprocessor = cfg.get('data_preprocessor')
    if is_quantized_model_cfg(model_cfg):
        preprocessor = model_cfg.get('data_preprocessor') or preprocessor
        model_cfg = model_cfg['architecture']
    if isinstance(model_cfg, dict) and preprocessor is not None:
        model_cfg.setdefault('data_preprocessor',
                             copy.deepcopy(preprocessor))
    return model_cfg


def build_float_model(cfg: Config,
                      checkpoint: Optional[str] = None) -> nn.Module:
    """Build ``cfg.model`` and load a float checkpoint strictly.

    The model is built from :func:`float_model_cfg` (the top-level
    ``data_preprocessor`` merged in as the Runner does; a
    ``mmquant.QuantizedModel`` contributes its ``architecture``).

    Args:
        cfg (Config): The config.
        checkpoint (str, optional): Float checkpoint; ``None`` keeps the
            initialisation (for tests).

    Returns:
        nn.Module: The float model, in eval mode.

    Raises:
        ValueError: If the checkpoint's keys or shapes do not match the
            model (listing the keys); nothing is loaded partially.
    """
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model = ROOT_MODELS.build(float_model_cfg(cfg))
    if checkpoint is not None:
        state = load_float_checkpoint(checkpoint)
        load_strict(model, state, checkpoint)
    return model.eval()


def load_strict(model: nn.Module, state: Dict[str, Any], source: str
                ) -> None:
    """``load_state_dict(strict=True)`` with a readable error.

    Args:
        model (nn.Module): The model.
        state (dict): The state dict.
        source (str): Where it came from (for the message).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f'{k}: checkpoint {tuple(state[k].shape)} vs model '
        f'{tuple(own[k].shape)}' for k in set(own) & set(state)
        if hasattr(state[k], 'shape') and state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        lines = [f'float checkpoint {source} does not match the model:']
        for title, keys in (('missing keys', missing),
                            ('unexpected keys', unexpected),
                            ('shape mismatches', shapes)):
            if keys:
                shown = ', '.join(keys[:20])
                more = f' ... ({len(keys)} in all)' if len(keys) > 20 \
                    else ''
                lines.append(f'  {title}: {shown}{more}')
        raise ValueError('\n'.join(lines))
    model.load_state_dict(state, strict=True)


def build_quantizer(cfg: Config,
                    overrides: Optional[Dict[str, Any]] = None
                    ) -> BaseQuantizer:
    """Build the config's ``quantizer`` with command-line overrides.

    Args:
        cfg (Config): The config; ``cfg.quantizer`` (default:
            ``BitSplitQuantizer`` with its defaults).
        overrides (dict, optional): Keys replacing the config's (e.g.
            ``w_bits`` from ``--w-bits``, ``a_bits=None`` to keep
            activations float).

    Returns:
        BaseQuantizer: The quantizer.
    """
    qcfg = dict(copy.deepcopy(cfg.get('quantizer', DEFAULT_QUANTIZER)))
    qcfg.update(overrides or {})
    quantizer = MODELS.build(qcfg)
    if not isinstance(quantizer, BaseQuantizer):
        raise TypeError(f'quantizer type {qcfg["type"]!r} is not an mmquant '
                        'quantizer')
    return quantizer


def prepare_calibration(model: nn.Module,
                        cfg: Config,
                        calib_samples: int = 256,
                        seed: int = 0,
                        batch_size: Optional[int] = None
                        ) -> Tuple[List[Dict[str, Any]],
                                   Callable[[nn.Module, Any], Any]]:
    """Preprocessed calibration batches and the forward that runs them.

    Args:
        model (nn.Module): The float model.
        cfg (Config): The config (its calibration dataloader).
        calib_samples (int): Calibration images. Defaults to 256.
        seed (int): Seed of the image subset. Defaults to 0.
        batch_size (int, optional): Overrides the batch size.

    Returns:
        tuple: The batches and ``forward_fn(model, batch)``.
    """
    loader = build_calib_dataloader(
        calib_dataloader_cfg(cfg), calib_samples, seed=seed,
        batch_size=batch_size)
    batches = preprocess_batches(model, loader)
    return batches, build_forward_fn(model, batches)


def int_checkpoint_meta(quantizer: BaseQuantizer, report: Any, cfg: Config,
                        checkpoint: Optional[str]) -> Dict[str, Any]:
    """The ``meta`` stored in an INT checkpoint written from a config.

    Args:
        quantizer (BaseQuantizer): The quantizer used.
        report (QuantReport): Its report.
        cfg (Config): The model config.
        checkpoint (str, optional): The float checkpoint.

    Returns:
        dict: Quantizer settings, source config, float checkpoint and its
        sha256, and the mode.
    """
    return dict(
        quantizer=dict(type=type(quantizer).__name__,
                       **quantizer.config.to_dict()),
        source_config=cfg.pretty_text,
        float_checkpoint=checkpoint,
        float_checkpoint_sha256=sha256_file(checkpoint)
        if checkpoint else None,
        mode=report.mode)


def run_ptq(cfg: Config,
            checkpoint: Optional[str],
            work_dir: str,
            quantizer_overrides: Optional[Dict[str, Any]] = None,
            calib_samples: int = 256,
            calib_batch_size: Optional[int] = None,
            do_eval: bool = True,
            eval_samples: Optional[int] = None) -> Dict[str, Any]:
    """Quantize the config's model and write the INT checkpoint and report.

    Args:
        cfg (Config): The config (``model``, data, ``quantizer``).
        checkpoint (str, optional): The float checkpoint.
        work_dir (str): Output folder.
        quantizer_overrides (dict, optional): See :func:`build_quantizer`.
        calib_samples (int): Calibration images. Defaults to 256.
        calib_batch_size (int, optional): Overrides the batch size.
        do_eval (bool): Evaluate float and quantized models.
        eval_samples (int, optional): Evaluate on the first samples only.

    Returns:
        dict: The report (as written to ``report.json``).
    """
    logger = MMLogger.get_current_instance()
    os.makedirs(work_dir, exist_ok=True)
    quantizer = build_quantizer(cfg, quantizer_overrides)
    qc = quantizer.config
    model = build_float_model(cfg, checkpoint)
    t0 = time.perf_counter()
    batches, forward_fn = prepare_calibration(
        model, cfg, calib_samples, qc.seed, calib_batch_size)
    t_data = time.perf_counter() - t0
    qmodel, report = quantizer.quantize(model, batches, forward_fn)
    report.timing['calibration_data'] = round(t_data, 4)
    metrics: Dict[str, Any] = {}
    if do_eval:
        t1 = time.perf_counter()
        logger.info('mmquant: evaluating the float model')
        metrics['float'] = evaluate(model, cfg, eval_samples)
        logger.info('mmquant: evaluating the quantized model')
        metrics['quantized'] = evaluate(qmodel, cfg, eval_samples)
        report.timing['evaluation'] = round(time.perf_counter() - t1, 4)
    name = osp.splitext(osp.basename(cfg.filename or 'model'))[0]
    a_tag = qc.a_bits if qc.a_bits is not None else 'f'
    out_path = osp.join(work_dir, f'{name}_w{qc.w_bits}a{a_tag}_int.pth')
    sizes = save_quantized(
        qmodel, out_path, int_checkpoint_meta(quantizer, report, cfg,
                                              checkpoint))
    report.extra.update(int_checkpoint=out_path, sizes=sizes,
                        metrics=_jsonable(metrics))
    report.save(osp.join(work_dir, 'report.json'))
    _log_summary(logger, report, metrics, out_path)
    return report.to_dict()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, 'item'):
        return value.item()
    return value


def _log_summary(logger: MMLogger, report: Any, metrics: Dict[str, Any],
                 out_path: str) -> None:
    layers = report.quantized_layers
    logger.info(f'mmquant: {len(layers)} layers quantized ({report.mode}); '
                f'time {report.timing}')
    for key in metrics.get('float', {}):
        f = metrics['float'][key]
        q = metrics['quantized'].get(key)
        if isinstance(f, (int, float)) and isinstance(q, (int, float)):
            logger.info(f'mmquant: {key}: float {f:.4f} -> quantized '
                        f'{q:.4f} ({q - f:+.4f})')
    logger.info(f'mmquant: INT checkpoint written to {out_path}')
