"""The PTQ pipeline behind ``tools/ptq.py``.

config + float checkpoint -> calibration batches -> quantizer ->
(optional) float and quantized evaluation -> INT checkpoint + report.
"""
import copy
import os
import os.path as osp
import re
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import init_default_scope
from torch import nn

from mmquant.checkpoint.float_loading import (load_float_checkpoint,
                                              sha256_file)
from mmquant.checkpoint.int_model import (INT_SUFFIX, READY_CONFIG_SUFFIX,
                                          save_quantized)
from mmquant.fileio import write_text_atomic
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


def bits_tag(w_bits: int, a_bits: Optional[int]) -> str:
    """The bit-width tag of output names: ``w4a8``, or ``w4af`` when
    activations stay float."""
    return f'w{w_bits}a{"f" if a_bits is None else a_bits}'


def output_stem(name: str, tag: str) -> str:
    """The stem of the files a run writes (``<stem>_int.pth``,
    ``<stem>_quantized.py``).

    ``name`` is kept as it is when it already contains ``tag`` as a whole
    token (case-insensitive, delimited by the ends of the name or by a
    character that is neither a letter nor a digit); otherwise ``_<tag>``
    is appended. So ``resnet18_w4a8_in1k`` at W4A8 gives
    ``resnet18_w4a8_in1k``, at W3A8 ``resnet18_w4a8_in1k_w3a8``, and
    ``model`` at W4A8 ``model_w4a8``.

    Args:
        name (str): The config name (file name without ``.py``).
        tag (str): The run's :func:`bits_tag`.

    Returns:
        str: The stem.
    """
    token = r'(?<![0-9a-z])' + re.escape(tag) + r'(?![0-9a-z])'
    if re.search(token, name, flags=re.IGNORECASE):
        return name
    return f'{name}_{tag}'


#: How a ready config refers to a file next to it: mmengine replaces
#: ``{{ fileDirname }}`` by the config file's folder when it reads it.
_NEXT_TO_CONFIG = '{{ fileDirname }}/'


def ready_config(cfg: Config, int_name: str) -> Config:
    """The config that evaluates an INT checkpoint as it is, with mmquant's
    or mmpretrain's/mmdet's stock ``tools/test.py``.

    It is ``cfg`` with ``model`` replaced by an ``mmquant.QuantizedModel``
    whose ``architecture`` is :func:`float_model_cfg` (the top-level
    ``data_preprocessor`` merged in) and whose ``int_checkpoint`` and
    ``load_from`` are ``{{ fileDirname }}/<int_name>``: the INT file next
    to the config file, wherever the folder is moved. ``mmquant`` is added
    to ``custom_imports``; ``work_dir`` is dropped (the test tool picks its
    own) and ``resume`` is ``False``.

    Args:
        cfg (Config): The PTQ config.
        int_name (str): File name of the INT checkpoint, which must lie in
            the folder the config is written to.

    Returns:
        Config: The config (write its ``pretty_text``).
    """
    if osp.basename(int_name) != int_name:
        raise ValueError(f'int_name must be a bare file name, got '
                         f'{int_name!r}')
    ref = _NEXT_TO_CONFIG + int_name
    out = cfg.to_dict()
    out['model'] = dict(
        type='mmquant.QuantizedModel',
        architecture=float_model_cfg(cfg),
        int_checkpoint=ref)
    out['load_from'] = ref
    out['resume'] = False
    out.pop('work_dir', None)
    custom = dict(out.get('custom_imports') or {})
    imports = list(custom.get('imports', []))
    if 'mmquant' not in imports:
        imports.append('mmquant')
    custom['imports'] = imports
    out['custom_imports'] = custom
    return Config(out)


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

    Writes into ``work_dir``: ``<stem>_int.pth`` (the INT checkpoint),
    ``<stem>_quantized.py`` (:func:`ready_config`: stock ``tools/test.py``
    runs it as it is) and ``report.json``, where ``<stem>`` is
    :func:`output_stem` of the config's name (``model`` for a config
    without a file) and the bits. A summary table is logged at the end.

    Returns:
        dict: The report (as written to ``report.json``).
    """
    logger = MMLogger.get_current_instance()
    quantizer = build_quantizer(cfg, quantizer_overrides)
    qc = quantizer.config
    name = osp.splitext(osp.basename(cfg.filename or 'model'))[0]
    stem = output_stem(name, bits_tag(qc.w_bits, qc.a_bits))
    out_path = osp.join(work_dir, stem + INT_SUFFIX)
    ready_path = osp.join(work_dir, stem + READY_CONFIG_SUFFIX)
    ready_text = _ready_config_text(cfg, out_path, ready_path)
    os.makedirs(work_dir, exist_ok=True)
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
    # the file's notice (int_file_notice) names the ready config
    sizes = save_quantized(
        qmodel, out_path, int_checkpoint_meta(quantizer, report, cfg,
                                              checkpoint))
    write_text_atomic(ready_path, ready_text)
    float_bytes = osp.getsize(checkpoint) if checkpoint else None
    report_path = osp.join(work_dir, 'report.json')
    report.extra.update(int_checkpoint=out_path, ready_config=ready_path,
                        sizes=sizes, float_checkpoint_bytes=float_bytes,
                        metrics=_jsonable(metrics))
    report.save(report_path)
    logger.info('mmquant: summary\n' + summary_table(
        name, quantizer, report, metrics, report_path))
    return report.to_dict()


def _ready_config_text(cfg: Config, int_path: str, ready_path: str) -> str:
    """The text of the ready config (with a header saying how to run it)."""
    int_name = osp.basename(int_path)
    ready_name = osp.basename(ready_path)
    header = (
        '# Written by mmquant (tools/ptq.py). Evaluates the INT checkpoint\n'
        f'# {int_name}, which it expects in its own folder, with\n'
        "# mmquant's, mmpretrain's or mmdet's tools/test.py, e.g.\n"
        f'#   python tools/test.py {ready_name} \\\n'
        f'#       {int_name}\n')
    return header + ready_config(cfg, int_name).pretty_text


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, 'item'):
        return value.item()
    return value


def _table(rows: List[Tuple[str, ...]], header: bool = False) -> str:
    """A plain-text table with ``|`` columns and ``-`` rules."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = '+' + '+'.join('-' * (w + 2) for w in widths) + '+'
    lines = [rule]
    for i, row in enumerate(rows):
        lines.append('| ' + ' | '.join(
            c.ljust(w) for c, w in zip(row, widths)) + ' |')
        if header and i == 0:
            lines.append(rule)
    lines.append(rule)
    return '\n'.join(lines)


def _bytes(n: Optional[int]) -> str:
    return 'n/a' if n is None else f'{n:,} bytes ({n / 2**20:.2f} MiB)'


def summary_table(name: str, quantizer: BaseQuantizer, report: Any,
                  metrics: Dict[str, Any], report_path: str) -> str:
    """The closing summary of a PTQ run as plain-text tables.

    Args:
        name (str): The model's (config's) name.
        quantizer (BaseQuantizer): The quantizer used.
        report (QuantReport): Its report, with ``extra`` filled in by
            :func:`run_ptq` (``int_checkpoint``, ``ready_config``,
            ``sizes``, ``float_checkpoint_bytes``).
        metrics (dict): ``{'float': {...}, 'quantized': {...}}`` or ``{}``.
        report_path (str): Where the report was written.

    Returns:
        str: The run table, then the metric table (float, quantized and
        their difference for every numeric metric) if evaluated.
    """
    qc = quantizer.config
    extra = report.extra
    int_bytes = extra['sizes']['file_bytes']
    float_bytes = extra.get('float_checkpoint_bytes')
    ratio = (f'{float_bytes / int_bytes:.2f}x (float checkpoint file: '
             f'{_bytes(float_bytes)})' if float_bytes else
             'n/a (no float checkpoint given)')
    a_bits = 'float' if qc.a_bits is None else qc.a_bits
    layers = report.to_dict()['summary']
    timing = dict(report.timing)
    data_s = timing.pop('calibration_data', None)
    eval_s = timing.pop('evaluation', None)
    total_s = timing.pop('total', None)
    parts = ', '.join(f'{k} {v:.1f} s' for k, v in timing.items())
    rows = [
        ('model', name),
        ('quantizer', f'{type(quantizer).__name__}, W{qc.w_bits} '
         f'(weights), A{a_bits} (activations)'),
        ('mode', report.mode),
        ('layers', f'{layers["quantized_layers"]} quantized, '
         f'{layers["float_layers"]} float'),
        ('calibration', f'{report.calib_samples} samples'),
        ('INT checkpoint', extra['int_checkpoint']),
        ('INT size', _bytes(int_bytes)),
        ('compression', ratio),
        ('ready config', extra['ready_config']),
        ('report', report_path),
    ]
    for label, value in (('calibration data', data_s),
                         ('quantization', total_s),
                         ('evaluation', eval_s)):
        if value is not None:
            extra_parts = f' ({parts})' if label == 'quantization' and \
                parts else ''
            rows.append((f'time: {label}', f'{value:.1f} s{extra_parts}'))
    text = _table(rows)
    numeric = [(k, f, metrics['quantized'].get(k))
               for k, f in metrics.get('float', {}).items()
               if isinstance(f, (int, float))
               and isinstance(metrics['quantized'].get(k), (int, float))]
    if numeric:
        text += '\n' + _table(
            [('metric', 'float', 'quantized', 'change')] +
            [(k, f'{f:.4f}', f'{q:.4f}', f'{q - f:+.4f}')
             for k, f, q in numeric], header=True)
    elif metrics:
        text += f'\nmetrics: {metrics}'
    return text
