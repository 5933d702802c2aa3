"""The PTQ pipeline behind ``tools/ptq.py``.

checks (arguments, files, config, data, work dir, free space) -> config +
float checkpoint -> calibration batches -> quantizer -> INT checkpoint +
report -> (optional) float and quantized evaluation -> report with the
metrics.

Everything a run needs is checked before calibration starts, and the INT
checkpoint is written as soon as quantization ends, so that a late failure
(evaluation, a bad test set) never loses a finished quantization.
"""
import copy
import errno
import hashlib
import io
import os
import os.path as osp
import re
import shutil
import stat
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch

from mmengine.config import Config
from mmengine.logging import MMLogger, print_log
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import init_default_scope
from torch import nn

from mmquant.checkpoint.container import CheckpointError
from mmquant.checkpoint.float_loading import (extract_state_dict,
                                              float_safe_globals,
                                              load_float_checkpoint,
                                              sha256_file)
from mmquant.checkpoint.int_model import (INT_SUFFIX, READY_CONFIG_SUFFIX,
                                          save_quantized)
from mmquant.fileio import write_text_atomic
from mmquant.mim import register_config_package
from mmquant.quantization.distributed import DistributedCalibration
from mmquant.quantization.journal import (LayerJournal, calibration_sha256,
                                          run_fingerprint)
from mmquant.quantization.methods import WEIGHT_METHODS, foreign_options
from mmquant.quantizers import BaseQuantizer, PTQQuantizer
from mmquant.registry import MODELS
from .calibration import (build_calib_dataloader, build_dataset,
                          build_forward_fn, calib_dataloader_cfg,
                          describe_dataset, preprocess_batches)
from .distributed import shard_calib_loader, sync_ranks
from .evaluation import evaluate, to_jsonable

#: Quantizer used when the config has no ``quantizer`` key.
DEFAULT_QUANTIZER = dict(type='mmquant.BitSplitQuantizer')


class PTQInputError(ValueError):
    """A problem with what the user gave a PTQ run (an argument, a file,
    the config, its data or the work dir), found before or while it runs.

    The message says what is wrong, where, and what to do; the command
    line tools print it on one line and exit with status 2.
    """


class EvaluationError(RuntimeError):
    """Evaluation failed after the INT checkpoint and the report were
    written (they are kept).

    Args:
        message (str): What failed.
        report (dict): The report as written (``extra.evaluation`` is
            ``'failed'``, ``extra.evaluation_error`` the message).
    """

    def __init__(self, message: str, report: Dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


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
    overrides = dict(overrides or {})
    qcfg.update(overrides)
    if 'type' in overrides or 'method' in overrides:
        _drop_other_method_options(qcfg, set(overrides))
    quantizer = MODELS.build(qcfg)
    if not isinstance(quantizer, BaseQuantizer):
        raise TypeError(f'quantizer type {qcfg["type"]!r} is not an mmquant '
                        'quantizer')
    return quantizer


def _drop_other_method_options(qcfg: Dict[str, Any],
                               overridden: Set[str]) -> None:
    """Drop the config's options of another weight method, in place.

    When an override switches the weight method (``--method rtn``, a
    benchmark method), options the config wrote for its own method (e.g.
    BitSplit's ``max_rounds``) do not apply to the new one; they are
    dropped with a log line. Options given in the overrides themselves are
    kept, so that the quantizer refuses them by name.

    Args:
        qcfg (dict): The merged quantizer dict (modified).
        overridden (set[str]): The keys the overrides set.
    """
    cls = qcfg.get('type')
    if isinstance(cls, str):
        cls = MODELS.get(cls)
    if not (isinstance(cls, type) and issubclass(cls, BaseQuantizer)):
        return  # MODELS.build names the problem
    method = qcfg.get('method', 'bitsplit') if cls is PTQQuantizer \
        else cls.method
    if method not in WEIGHT_METHODS:
        return  # the quantizer names the problem
    dropped = sorted(key for key in foreign_options(method, qcfg)
                     if key not in overridden)
    for key in dropped:
        del qcfg[key]
    if dropped:
        print_log(f'mmquant: method {method!r}: the config\'s options of '
                  f'another method ({", ".join(dropped)}) do not apply '
                  'and were dropped', logger='current')


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


def int_checkpoint_meta(quantizer: BaseQuantizer,
                        report: Any,
                        cfg: Config,
                        checkpoint: Optional[str],
                        checkpoint_sha256: Optional[str] = None
                        ) -> Dict[str, Any]:
    """The ``meta`` stored in an INT checkpoint written from a config.

    Args:
        quantizer (BaseQuantizer): The quantizer used.
        report (QuantReport): Its report.
        cfg (Config): The model config.
        checkpoint (str, optional): The float checkpoint.
        checkpoint_sha256 (str, optional): The sha256 of the bytes the
            float model was loaded from (:func:`read_float_checkpoint`);
            ``None`` hashes the file at ``checkpoint`` now.

    Returns:
        dict: Quantizer settings, source config, float checkpoint and its
        sha256, and the mode.
    """
    if checkpoint_sha256 is None and checkpoint:
        checkpoint_sha256 = sha256_file(checkpoint)
    return dict(
        quantizer=dict(type=type(quantizer).__name__,
                       **quantizer.config.to_dict()),
        source_config=cfg.pretty_text,
        float_checkpoint=checkpoint,
        float_checkpoint_sha256=checkpoint_sha256,
        mode=report.mode)


def bits_tag(w_bits: int, a_bits: Optional[int],
             target_bits: Optional[float] = None) -> str:
    """The bit-width tag of output names: ``w4a8``, ``w4af`` when
    activations stay float, ``w3.5mixa8`` for mixed precision at an
    average of 3.5 bits per weight."""
    w = str(w_bits)
    if target_bits is not None:
        text = f'{target_bits:g}'
        w = (text if '.' in text else f'{target_bits:.1f}') + 'mix'
    return f'w{w}a{"f" if a_bits is None else a_bits}'


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


def check_count(value: Any, name: str, optional: bool = False,
                hint: str = '') -> None:
    """Refuse a count that is not a positive int (``bool`` included).

    Args:
        value: The value given.
        name (str): How the user gave it (``--calib-samples``), for the
            message.
        optional (bool): Whether ``None`` is allowed.
        hint (str): What to do instead, appended to the message.

    Raises:
        PTQInputError: If ``value`` is not an int >= 1 (nor an allowed
            ``None``).
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PTQInputError(f'{name} must be a whole number >= 1, got '
                            f'{value!r}{hint}')


def check_input_file(path: str, what: str) -> None:
    """Check that ``path`` is an existing, readable regular file.

    Args:
        path (str): The file.
        what (str): What it is, for the message (``float checkpoint``).

    Raises:
        PTQInputError: If it does not exist, is not a regular file (a
            folder, a FIFO, a device) or cannot be opened for reading.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise PTQInputError(f'{what} {path!r} does not exist; check the '
                            'path') from None
    except OSError as err:
        raise PTQInputError(f'cannot access {what} {path!r}: '
                            f'{err.strerror}') from None
    if not stat.S_ISREG(mode):
        kind = 'a folder' if stat.S_ISDIR(mode) else 'not a regular file'
        raise PTQInputError(f'{what} {path!r} is {kind}; give the path of '
                            'the file itself')
    try:
        with open(path, 'rb'):
            pass
    except OSError as err:
        raise PTQInputError(f'cannot read {what} {path!r}: {err.strerror}; '
                            'check its permissions') from None


def load_config(path: str,
                options: Optional[Dict[str, Any]] = None) -> Config:
    """Read a config file and apply ``--cfg-options``.

    ``'mmquant::path'`` references to mmquant's shipped configs resolve
    (:func:`mmquant.mim.register_config_package`).

    Args:
        path (str): The config file.
        options (dict, optional): ``--cfg-options``.

    Returns:
        Config: The config.

    Raises:
        PTQInputError: If the file is missing or unreadable, or it or the
            options cannot be applied.
    """
    check_input_file(path, 'config')
    register_config_package()
    try:
        cfg = Config.fromfile(path)
    except Exception as err:  # noqa: BLE001 - configs fail in many ways
        text = ' '.join(str(err).split())
        raise PTQInputError(f'cannot read config {path!r}: '
                            f'{type(err).__name__}: {text}') from err
    if options:
        try:
            cfg.merge_from_dict(options)
        except Exception as err:  # noqa: BLE001
            raise PTQInputError(f'--cfg-options {options}: '
                                f'{type(err).__name__}: {err}') from err
    return cfg


def read_float_checkpoint(path: str) -> Tuple[Dict[str, Any], str, int]:
    """Read a float checkpoint once; hash and load the bytes that were read.

    The sha256 recorded in the INT checkpoint is therefore that of the
    bytes the float model was loaded from, even if the file is replaced
    (a ``CheckpointHook(max_keep_ckpts=...)`` rotating it) or deleted while
    the run goes on. Loading uses the same weights-only allowlist as
    :func:`~mmquant.checkpoint.float_loading.load_float_checkpoint`; when
    the bytes do not load, that function is run on ``path`` for its
    error message.

    Args:
        path (str): The float checkpoint.

    Returns:
        tuple: The state dict, the sha256 of the bytes read (hex) and
        their number.

    Raises:
        PTQInputError: If the file is missing, not a regular file or
            unreadable.
        CheckpointError: If the file is not a loadable float checkpoint.
    """
    check_input_file(path, 'float checkpoint')
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as err:
        raise PTQInputError(f'cannot read float checkpoint {path!r}: '
                            f'{err.strerror}') from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        with torch.serialization.safe_globals(float_safe_globals()):
            loaded = torch.load(io.BytesIO(data), map_location='cpu',
                                weights_only=True)
    except Exception as err:  # noqa: BLE001 - the loader names it
        load_float_checkpoint(path)  # raises the loader's clear error
        raise CheckpointError(
            f'float checkpoint {path!r} changed while it was read '
            f'({type(err).__name__}: {err}); run again once it is '
            'complete') from err
    return extract_state_dict(loaded), digest, len(data)


def estimate_int_bytes(model: nn.Module, w_bits: int) -> int:
    """An estimate of an INT checkpoint's size on disk.

    Weights of Conv/Linear layers count ``w_bits`` bits per value, every
    other state-dict tensor its float size, plus 64 KiB of metadata.

    Args:
        model (nn.Module): The float model.
        w_bits (int): The weight bits.

    Returns:
        int: Bytes.
    """
    weights = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d,
                               nn.Linear)):
            weights.add(f'{name}.weight' if name else 'weight')
    total = 64 << 10
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue
        if key in weights:
            total += (value.numel() * w_bits + 7) // 8
        else:
            total += value.numel() * value.element_size()
    return total


def prepare_work_dir(work_dir: str) -> List[str]:
    """Create ``work_dir`` if needed and check that files can be written
    into it.

    Args:
        work_dir (str): The output folder.

    Returns:
        list[str]: The folders this call created, deepest first (for
        :func:`remove_empty_dirs` when the run fails); a folder that a
        concurrent run created at the same time is not among them.

    Raises:
        PTQInputError: If the folder cannot be created or written to
            (read-only file system, permissions, a file in the way).
    """
    missing = []
    path = osp.abspath(work_dir)
    while not osp.isdir(path):
        if osp.lexists(path):
            raise PTQInputError(f'work dir {work_dir!r}: {path!r} exists '
                                'and is not a folder; choose another '
                                '--work-dir')
        missing.append(path)
        path = osp.dirname(path)
    created: List[str] = []
    try:
        for folder in reversed(missing):
            try:
                os.mkdir(folder)
            except FileExistsError:
                if not osp.isdir(folder):
                    raise
                continue
            created.insert(0, folder)
        fd, probe = tempfile.mkstemp(prefix='.mmquant_probe_',
                                     dir=work_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        remove_empty_dirs(created)
        raise PTQInputError(
            f'cannot write to work dir {work_dir!r}: '
            f'{err.strerror or err}; choose a writable --work-dir') from None
    return created


def remove_empty_dirs(folders: List[str]) -> None:
    """Remove the given folders, deepest first, while they are empty.

    Args:
        folders (list[str]): Folders, deepest first.
    """
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def check_free_space(work_dir: str, need: int) -> None:
    """Refuse to start when the work dir's file system cannot hold the
    INT checkpoint.

    Args:
        work_dir (str): An existing folder.
        need (int): Estimated bytes (:func:`estimate_int_bytes`).

    Raises:
        PTQInputError: If fewer than ``need`` bytes (plus 10 %) are free.
    """
    free = shutil.disk_usage(work_dir).free
    if free < need * 1.1:
        raise PTQInputError(
            f'not enough free space in work dir {work_dir!r}: '
            f'{free:,} bytes free, the INT checkpoint needs about '
            f'{need:,}; free some space or choose another --work-dir')


def build_datasets(cfg: Config, do_eval: bool
                   ) -> Tuple[Dict[str, Any], Optional[Any]]:
    """Build the calibration and (if evaluating) test datasets and check
    the test evaluator, before anything expensive runs.

    Args:
        cfg (Config): The config.
        do_eval (bool): Whether the run evaluates.

    Returns:
        tuple: The calibration dataloader config with its ``dataset``
        built, and the built test dataset (``None`` without evaluation).

    Raises:
        PTQInputError: If a dataloader or the evaluator is missing, or a
            dataset is empty or cannot be built (missing data root or
            annotation file, unknown type ...), or the evaluator cannot be
            built.
    """
    from mmengine.evaluator import Evaluator
    try:
        calib = calib_dataloader_cfg(cfg)
    except ValueError as err:
        raise PTQInputError(f'{err}; add one to the config') from None
    calib['dataset'] = load_dataset(calib['dataset'], 'calibration')
    if not do_eval:
        return calib, None
    for key in ('test_dataloader', 'test_evaluator'):
        if not cfg.get(key):
            raise PTQInputError(
                f'the config has no {key}, so the run cannot evaluate; '
                'add it, or pass --no-eval')
    test = load_dataset(cfg.test_dataloader.dataset, 'test')
    try:
        Evaluator(copy.deepcopy(cfg.test_evaluator))
    except Exception as err:  # noqa: BLE001 - any config mistake
        raise PTQInputError(
            f'cannot build the test_evaluator: {type(err).__name__}: '
            f'{err}; fix the config or pass --no-eval') from err
    return calib, test


def load_dataset(dataset_cfg: Any, what: str) -> Any:
    """Build a dataset from its config, naming it on failure.

    Args:
        dataset_cfg (dict | Dataset): The dataset config (the registry's
            default scope must be set).
        what (str): ``'calibration'`` or ``'test'``, for the message.

    Returns:
        Dataset: The dataset, not empty.

    Raises:
        PTQInputError: If it is empty or cannot be built (a missing data
            root or annotation file, an unknown type ...).
    """
    try:
        return build_dataset(dataset_cfg, what)
    except Exception as err:  # noqa: BLE001 - datasets raise many kinds
        text = ' '.join(str(err).split()).rstrip('.')
        if text.startswith(f'the {what} dataset is empty'):
            raise PTQInputError(text) from err
        raise PTQInputError(
            f'cannot load the {what} dataset'
            f'{describe_dataset(dataset_cfg)}: {type(err).__name__}: '
            f'{text}; check its data_root/ann_file/data_prefix (e.g. with '
            '--cfg-options)') from err


def resolve_device(device: Optional[str] = None) -> torch.device:
    """The device a PTQ run uses.

    Args:
        device (str, optional): A torch device string (``'cpu'``,
            ``'cuda'``, ``'cuda:1'``); ``None`` picks ``'cuda'`` when
            CUDA is available, else ``'cpu'``.

    Returns:
        torch.device: The device.

    Raises:
        PTQInputError: If ``device`` is not a device string, names a
            device type other than CPU and CUDA, or CUDA (or that CUDA
            device) is not available.
    """
    if device is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise PTQInputError(f'device (--device) {device!r} is not a torch '
                            f'device: {err}') from err
    if dev.type not in ('cpu', 'cuda'):
        raise PTQInputError(f"device (--device) must be 'cpu' or 'cuda[:N]'"
                            f', got {device!r}')
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise PTQInputError(f'device (--device) {device!r}: CUDA is not '
                                'available here; use --device cpu')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PTQInputError(
                f'device (--device) {device!r}: only '
                f'{torch.cuda.device_count()} CUDA device(s) are visible')
    return dev


def run_ptq(cfg: Config,
            checkpoint: Optional[str],
            work_dir: str,
            quantizer_overrides: Optional[Dict[str, Any]] = None,
            calib_samples: int = 256,
            calib_batch_size: Optional[int] = None,
            do_eval: bool = True,
            eval_samples: Optional[int] = None,
            journal_dir: Optional[str] = None,
            resume: bool = False,
            device: Optional[str] = None) -> Dict[str, Any]:
    """Quantize the config's model; write the INT checkpoint and the report
    first, then evaluate.

    Before calibration starts, everything the run needs is checked: the
    numbers, the quantizer config, the float checkpoint (a readable
    regular file that loads into the model), the calibration dataset and,
    when evaluating, the test dataset and evaluator, and that the work
    dir can be written and has room for the INT checkpoint. The float
    checkpoint is read once: its recorded sha256 is that of the bytes the
    model was loaded from. As soon as quantization ends, the INT
    checkpoint, the ready config and the report are written; the
    evaluation comes after, and its metrics are added to the report.

    Args:
        cfg (Config): The config (``model``, data, ``quantizer``).
        checkpoint (str, optional): The float checkpoint.
        work_dir (str): Output folder (created if needed).
        quantizer_overrides (dict, optional): See :func:`build_quantizer`.
        calib_samples (int): Calibration images (>= 1). Defaults to 256.
        calib_batch_size (int, optional): Overrides the batch size (>= 1).
        do_eval (bool): Evaluate float and quantized models.
        eval_samples (int, optional): Evaluate on the first samples only
            (>= 1).
        journal_dir (str, optional): Keep a resume journal there
            (:class:`~mmquant.quantization.journal.LayerJournal`: one
            atomically written file per solved layer and a fingerprint of
            the config as run, the quantizer settings, the float
            checkpoint and the calibration set); it is removed once the
            INT checkpoint is written. Defaults to None (no journal).
        resume (bool): Continue the journal in ``journal_dir``: its
            layers are not solved again. Refused (``PTQInputError``) when
            the fingerprint differs. Defaults to False.
        device (str, optional): Where the model, the calibration batches
            and the whole quantization run (see :func:`resolve_device`);
            ``None``: ``'cuda'`` when available, else ``'cpu'``.

    Writes into ``work_dir``: ``<stem>_int.pth`` (the INT checkpoint),
    ``<stem>_quantized.py`` (:func:`ready_config`: stock ``tools/test.py``
    runs it as it is) and ``report.json``, where ``<stem>`` is
    :func:`output_stem` of the config's name (``model`` for a config
    without a file) and the bits. ``report.json``'s ``extra.evaluation``
    is ``'skipped'``, ``'pending'`` (written before the evaluation),
    ``'done'`` or ``'failed'`` (with ``extra.evaluation_error``). A summary
    table is logged at the end. A run that fails before writing the INT
    checkpoint removes the folders it created.

    Returns:
        dict: The report (as written to ``report.json``).

    Raises:
        PTQInputError: If an argument, a file, the config, its data or
            the work dir is unusable (nothing is written then), or the INT
            checkpoint cannot be written.
        CheckpointError: If the float checkpoint cannot be loaded.
        EvaluationError: If evaluation fails; the INT checkpoint, ready
            config and report are kept.
    """
    logger = MMLogger.get_current_instance()
    t_start = time.perf_counter()
    run_device = resolve_device(device)
    check_count(calib_samples, 'calib_samples (--calib-samples)')
    check_count(calib_batch_size, 'calib_batch_size (--calib-batch-size)',
                optional=True)
    check_count(eval_samples, 'eval_samples (--eval-samples)',
                optional=True, hint='; to skip evaluation use --no-eval')
    try:
        quantizer = build_quantizer(cfg, quantizer_overrides)
    except (ValueError, TypeError, KeyError) as err:
        raise PTQInputError(f'quantizer config: {err}') from err
    qc = quantizer.config
    name = osp.splitext(osp.basename(cfg.filename or 'model'))[0]
    stem = output_stem(name, bits_tag(qc.w_bits, qc.a_bits,
                                      qc.target_bits))
    out_path = osp.join(work_dir, stem + INT_SUFFIX)
    ready_path = osp.join(work_dir, stem + READY_CONFIG_SUFFIX)
    report_path = osp.join(work_dir, 'report.json')
    ready_text = _ready_config_text(cfg, out_path, ready_path)
    if checkpoint is not None:
        check_input_file(checkpoint, 'float checkpoint')
    if DistributedCalibration.current() is not None:
        # distributed (docs/distributed.md): no resume journal, and the
        # evaluation is tools/dist_test.sh's
        if resume:
            raise PTQInputError('resume is not supported in a distributed '
                                'run; rerun it without --resume')
        journal_dir, do_eval = None, False
        sync_ranks()  # every rank's checks passed: build the data
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    calib_cfg, test_dataset = build_datasets(cfg, do_eval)
    try:
        model = build_float_model(cfg)
    except Exception as err:  # noqa: BLE001 - model configs fail so
        text = ' '.join(str(err).split())
        raise PTQInputError(
            f'cannot build the model of the config: {type(err).__name__}: '
            f'{text}; fix its model (or data_preprocessor) settings'
        ) from err
    float_sha256 = float_bytes = None
    if checkpoint is not None:
        state, float_sha256, float_bytes = read_float_checkpoint(checkpoint)
        load_strict(model, state, checkpoint)
        del state
    # the data preprocessor follows the model: batches, statistics,
    # solver and the quantized layers are then on this device
    model.to(run_device)
    logger.info(f'mmquant: running on {run_device}')
    created = prepare_work_dir(work_dir)
    try:
        check_free_space(work_dir, estimate_int_bytes(model, qc.w_bits))
        t0 = time.perf_counter()
        t_checks = t0 - t_start
        loader = build_calib_dataloader(calib_cfg, calib_samples, qc.seed,
                                        calib_batch_size)
        loader = shard_calib_loader(loader)  # distributed: rank's block
        batches = preprocess_batches(model, loader)
        forward_fn = build_forward_fn(model, batches)
        t_data = time.perf_counter() - t0
        journal = None
        if journal_dir is not None:
            journal = LayerJournal(journal_dir, run_fingerprint(
                cfg.pretty_text, qc.to_dict(), float_sha256,
                calibration_sha256(batches), calib_samples,
                calib_batch_size), resume=resume)
            if resume:
                logger.info(f'mmquant: resuming: {len(journal.entries)} '
                            f'solved layer(s) in {journal_dir}')
        elif resume:
            raise PTQInputError('resume=True needs a journal_dir')
        qmodel, report = quantizer.quantize(model, batches, forward_fn,
                                            journal=journal)
        del batches
        if journal is not None:
            report.extra['resumed_layers'] = len(journal.restored)
        report.timing['checks'] = round(t_checks, 4)
        report.timing['calibration_data'] = round(t_data, 4)
        # the file's notice (int_file_notice) names the ready config
        meta = int_checkpoint_meta(quantizer, report, cfg, checkpoint,
                                   float_sha256)
        try:
            sizes = save_quantized(qmodel, out_path, meta)
        except RuntimeError as err:  # torch's writer on a full disk
            raise PTQInputError(
                f'cannot write the INT checkpoint {out_path!r}: '
                f'{str(err).splitlines()[0]}; check the free space and '
                'permissions of the work dir') from err
    except BaseException:
        remove_empty_dirs(created)
        raise
    if journal_dir is not None:
        shutil.rmtree(journal_dir, ignore_errors=True)
    write_text_atomic(ready_path, ready_text)
    report.extra.update(int_checkpoint=out_path, ready_config=ready_path,
                        sizes=sizes, float_checkpoint_bytes=float_bytes,
                        float_checkpoint_sha256=float_sha256,
                        evaluation='pending' if do_eval else 'skipped',
                        metrics={})
    report.save(report_path)
    figure = _save_figure(report, osp.join(work_dir, 'report.png'))
    logger.info(f'mmquant: wrote {out_path}, {ready_path}, {report_path}'
                + (f' and {figure}' if figure else ''))
    metrics: Dict[str, Any] = {}
    if do_eval:
        t1 = time.perf_counter()
        try:
            logger.info('mmquant: evaluating the float model')
            metrics['float'] = evaluate(model, cfg, eval_samples,
                                        dataset=test_dataset)
            logger.info('mmquant: evaluating the quantized model')
            metrics['quantized'] = evaluate(qmodel, cfg, eval_samples,
                                            dataset=test_dataset)
        except Exception as err:  # noqa: BLE001 - reported, file kept
            text = ' '.join(f'{type(err).__name__}: {err}'.split())
            report.extra.update(evaluation='failed',
                                evaluation_error=text,
                                metrics=to_jsonable(metrics))
            report.save(report_path)
            message = (f'evaluation failed ({text}); the INT checkpoint '
                       f'{out_path} and the report {report_path} are kept: '
                       f'evaluate it later with tools/test.py {ready_path} '
                       f'{out_path}')
            logger.error(f'mmquant: {message}')
            raise EvaluationError(message, report.to_dict()) from err
        report.timing['evaluation'] = round(time.perf_counter() - t1, 4)
        report.extra.update(evaluation='done', metrics=to_jsonable(metrics))
        report.save(report_path)
    logger.info('mmquant: summary\n' + summary_table(
        name, quantizer, report, metrics, report_path))
    return report.to_dict()


def _save_figure(report: Any, path: str) -> Optional[str]:
    """Write the report's figure (docs/analysis.md); a figure that cannot
    be drawn is logged, never fails the run.

    Args:
        report (QuantReport): The report.
        path (str): The PNG to write.

    Returns:
        str, optional: ``path``, or ``None`` if it was not written.
    """
    try:
        from mmquant.visualization import plot_report
        return plot_report(report.to_dict(), path)
    except Exception as err:  # noqa: BLE001 - a figure is optional
        MMLogger.get_current_instance().warning(
            f'mmquant: no report figure ({type(err).__name__}: {err})')
        return None


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
    weights = f'W{qc.w_bits}'
    mixed = extra.get('mixed_precision')
    if mixed:
        widths = sorted({*mixed['bits'].values(), *mixed['fixed'].values()})
        weights = (f"mixed W{'/'.join(map(str, widths))}, "
                   f"{mixed['average_bits']:.3f} bits per weight (target "
                   f"{mixed['target_bits']:g})")
    timing = dict(report.timing)
    checks_s = timing.pop('checks', None)
    data_s = timing.pop('calibration_data', None)
    eval_s = timing.pop('evaluation', None)
    total_s = timing.pop('total', None)
    parts = ', '.join(f'{k} {v:.1f} s' for k, v in timing.items())
    rows = [
        ('model', name),
        ('quantizer', f'{type(quantizer).__name__}, {weights} '
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
    for label, value in (('checks', checks_s),
                         ('calibration data', data_s),
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


#: ``errno`` values of :class:`OSError` that the tools report as user
#: errors (a path, permissions, a full or read-only disk).
USER_ERRNOS = frozenset(
    getattr(errno, n) for n in ('ENOENT', 'EACCES', 'EPERM', 'ENOSPC',
                                'EDQUOT', 'EROFS', 'ENOTDIR', 'EISDIR',
                                'ENAMETOOLONG', 'EEXIST', 'ELOOP')
    if hasattr(errno, n))


def user_error_message(err: BaseException) -> Optional[str]:
    """The one-line message of a user error, or ``None`` for a bug.

    User errors are :class:`ValueError` (bad arguments, configs,
    checkpoints: :class:`PTQInputError`, ``CheckpointError`` ...), the
    registry's unknown-type ``KeyError``, a config file that does not
    parse (``SyntaxError``) and :class:`OSError` for a missing path,
    permissions or a full or read-only disk.

    Args:
        err (BaseException): The exception.

    Returns:
        str | None: ``'<what>: <message>'`` on one line, or ``None``.
    """
    if isinstance(err, OSError):
        if err.errno not in USER_ERRNOS:
            return None
        where = f' {err.filename!r}' if err.filename else ''
        what = {errno.ENOSPC: 'disk full', errno.EROFS: 'read-only file '
                'system'}.get(err.errno, err.strerror or type(err).__name__)
        text = f'{what}{where}'
        if err.errno in (errno.ENOSPC, getattr(errno, 'EDQUOT', -1)):
            text += '; free some space or choose another --work-dir'
        return text
    if isinstance(err, (ValueError, SyntaxError)) or (
            isinstance(err, KeyError) and 'registry' in str(err)):
        text = err.args[0] if isinstance(err, KeyError) and err.args \
            else str(err)
        return '; '.join(part.strip() for part in str(text).splitlines()
                         if part.strip()) or type(err).__name__
    return None


def debug_requested(flag: bool = False) -> bool:
    """Whether to show tracebacks: ``--debug`` or ``MMQUANT_DEBUG=1``.

    Args:
        flag (bool): The ``--debug`` flag.

    Returns:
        bool: True to show tracebacks.
    """
    return flag or os.environ.get('MMQUANT_DEBUG', '').strip() not in (
        '', '0', 'false', 'False')
