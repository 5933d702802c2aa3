"""A per-layer journal that lets an interrupted quantization resume.

A journal is a folder (``tools/ptq.py`` uses ``<run folder>/resume/``)
holding ``fingerprint.json`` (what the run was computed from) and, for
every layer solved so far, one file ``layer_<name>.pth`` written
atomically (:func:`mmquant.fileio.atomic_write`: a temporary file, then a
rename, so a process killed during a write leaves the previous state and
at most a stray ``.*.tmp`` file, never a partial layer file). A layer file
holds the integers in the layer's own layout, the per-channel scales, the
input activation scale and grid, and the layer's report fields.

:func:`mmquant.quantize` with ``journal=`` records every layer it solves
and, for a layer already in the journal, swaps in the recorded integers
and scales instead of solving it again. Everything else of the run (the
float pass with its seeded row sampling, the seeded activation
observers, the error-compensated passes) runs as in an uninterrupted run,
so the layers solved after a resume see the same inputs and give
bit-identical integers.

Test hooks (for tests only, read when a layer is recorded):
``MMQUANT_TEST_EXIT_AFTER_LAYERS=k`` ends the process with
``os._exit(3)`` right after the k-th layer file this process wrote;
``MMQUANT_TEST_EXIT_IN_JOURNAL_WRITE=k`` ends it in the middle of the
k-th write (half of the bytes are in the temporary file, nothing is
renamed). Both simulate a killed run.
"""
import hashlib
import io
import json
import os
import os.path as osp
import re
from dataclasses import asdict, dataclass
from typing import IO, Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from mmquant.fileio import atomic_write, write_text_atomic
from .report import LayerReport

#: The fingerprint's file name in a journal folder.
FINGERPRINT = 'fingerprint.json'
#: Version of the layer file layout.
JOURNAL_VERSION = 1
#: Report fields a layer file restores (the outcome of its solve).
_REPORT_FIELDS = ('rows', 'objective_rtn', 'objective', 'rel_error_rtn',
                  'rel_error', 'rounds', 'time_s', 'sensitivity', 'note')
#: Exit status of the test hooks.
TEST_EXIT_STATUS = 3
_EXIT_AFTER = 'MMQUANT_TEST_EXIT_AFTER_LAYERS'
_EXIT_DURING = 'MMQUANT_TEST_EXIT_IN_JOURNAL_WRITE'

#: What each fingerprint field is, for the refusal message.
_FIELD_NAMES = dict(
    config_sha256='the config (as run)',
    quantizer='the quantizer settings (config or command-line flags)',
    float_checkpoint_sha256='the float checkpoint',
    calibration_sha256='the calibration set',
    calib_samples='--calib-samples',
    calib_batch_size='--calib-batch-size')


class JournalError(ValueError):
    """A journal that cannot be used to resume (missing, unreadable, or
    from a run with other inputs)."""


@dataclass
class JournalEntry:
    """One solved layer.

    Args:
        name (str): The layer's module name.
        qweight (Tensor): Its integers, in the layer's own weight layout.
        scale (Tensor): Its per-channel scales.
        act (tuple, optional): ``(act_scale, act_signed)`` of its input,
            ``None`` when the input stays float.
        w_bits (int): Its weight bits.
        report (dict): Its :class:`LayerReport` fields
            (``rows``, ``objective``, ``rel_error`` ...).
    """

    name: str
    qweight: Tensor
    scale: Tensor
    act: Optional[Tuple[float, bool]]
    w_bits: int
    report: Dict[str, Any]

    def apply_report(self, rep: LayerReport) -> None:
        """Copy the recorded report fields onto ``rep``.

        Args:
            rep (LayerReport): The layer's report in the resumed run.
        """
        for key in _REPORT_FIELDS:
            if key in self.report:
                setattr(rep, key, self.report[key])


def _hash_into(h: Any, obj: Any) -> None:
    """Feed the tensors (and ``metainfo``) of a nested batch to ``h``."""
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f'T{t.dtype}{tuple(t.shape)}'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b'')
    elif isinstance(obj, dict):
        h.update(b'D')
        for key in sorted(obj, key=str):
            h.update(repr(key).encode())
            _hash_into(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f'L{len(obj)}'.encode())
        for item in obj:
            _hash_into(h, item)
    elif isinstance(obj, (int, float, str, bool, type(None))):
        h.update(repr(obj).encode())
    else:
        meta = getattr(obj, 'metainfo', None)
        h.update(type(obj).__name__.encode())
        if isinstance(meta, dict):
            h.update(repr(sorted((str(k), repr(v))
                                 for k, v in meta.items())).encode())


def calibration_sha256(batches: List[Any]) -> str:
    """The sha256 of a calibration set.

    It covers every tensor (dtype, shape and bytes) of the batches, nested
    in dicts, lists and tuples, and the ``metainfo`` of other objects
    (mmengine data samples).

    Args:
        batches (list): The calibration batches.

    Returns:
        str: The hex digest.
    """
    h = hashlib.sha256()
    _hash_into(h, list(batches))
    return h.hexdigest()


def _file_name(name: str) -> str:
    """The layer file of a layer (module names are dotted identifiers)."""
    safe = re.sub(r'[^0-9A-Za-z_.-]', '_', name)
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f'layer_{safe}_{digest}.pth'


class LayerJournal:
    """The journal folder of one run.

    Args:
        root (str): The folder (created if needed).
        fingerprint (dict): JSON-able description of the run's inputs
            (see :func:`run_fingerprint`).
        resume (bool): Continue the journal in ``root``: its fingerprint
            must equal ``fingerprint`` and its layer files are loaded.
            Otherwise ``root`` must hold no journal yet, and the
            fingerprint is written.

    Raises:
        JournalError: On resume, when ``root`` has no fingerprint, it
            differs (the message names what differs) or a layer file
            cannot be read; on a new journal, when ``root`` already holds
            one.
    """

    def __init__(self, root: str, fingerprint: Dict[str, Any],
                 resume: bool = False) -> None:
        self.root = root
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.entries: Dict[str, JournalEntry] = {}
        self.restored: List[str] = []
        self.written = 0
        path = osp.join(root, FINGERPRINT)
        if resume:
            self._check_fingerprint(path)
            self._load()
        else:
            if osp.exists(path):
                raise JournalError(
                    f'{root!r} already holds a resume journal; resume it '
                    '(--resume) or use a new run folder')
            write_text_atomic(path, json.dumps(self.fingerprint, indent=2,
                                               sort_keys=True))

    def _check_fingerprint(self, path: str) -> None:
        try:
            with open(path, encoding='utf-8') as f:
                old = json.load(f)
        except FileNotFoundError:
            raise JournalError(
                f'cannot resume: {osp.dirname(path)!r} has no '
                f'{FINGERPRINT} (not a folder of an interrupted run)'
            ) from None
        except (OSError, ValueError) as err:
            raise JournalError(f'cannot resume: unreadable {path!r}: '
                               f'{err}') from None
        keys = sorted(set(old) | set(self.fingerprint))
        differ = [k for k in keys if old.get(k) != self.fingerprint.get(k)]
        if differ:
            what = ', '.join(_FIELD_NAMES.get(k, k) for k in differ)
            raise JournalError(
                f'cannot resume {osp.dirname(osp.dirname(path))!r}: '
                f'{what} differ(s) from the interrupted run; rerun with '
                'the same config, float checkpoint, calibration settings '
                'and flags, or start a new run without --resume')

    def _load(self) -> None:
        for fname in sorted(os.listdir(self.root)):
            if not (fname.startswith('layer_') and fname.endswith('.pth')):
                continue  # fingerprint, stray temporary files
            path = osp.join(self.root, fname)
            try:
                data = torch.load(path, map_location='cpu',
                                  weights_only=True)
                entry = JournalEntry(
                    name=data['name'], qweight=data['qweight'],
                    scale=data['scale'],
                    act=None if data['act'] is None else
                    (float(data['act'][0]), bool(data['act'][1])),
                    w_bits=int(data['w_bits']),
                    report=dict(data['report']))
                if data['version'] != JOURNAL_VERSION:
                    raise ValueError(f'version {data["version"]}')
            except Exception as err:  # noqa: BLE001 - any bad file
                raise JournalError(
                    f'cannot resume: journal file {path!r} is unreadable '
                    f'({type(err).__name__}: {err})') from None
            if fname != _file_name(entry.name):
                raise JournalError(f'cannot resume: journal file {path!r} '
                                   f'holds layer {entry.name!r}')
            self.entries[entry.name] = entry

    def get(self, name: str) -> Optional[JournalEntry]:
        """The recorded layer ``name``, if any (and mark it restored).

        Args:
            name (str): The layer's module name.

        Returns:
            JournalEntry, optional: The entry, ``None`` if not recorded.
        """
        entry = self.entries.get(name)
        if entry is not None:
            self.restored.append(name)
        return entry

    def record(self, name: str, qweight: Tensor, scale: Tensor,
               act: Optional[Tuple[float, bool]], w_bits: int,
               report: LayerReport) -> str:
        """Write one solved layer atomically.

        Args:
            name (str): The layer's module name.
            qweight (Tensor): Its integers (own weight layout).
            scale (Tensor): Its scales.
            act (tuple, optional): ``(act_scale, act_signed)`` or None.
            w_bits (int): Its weight bits.
            report (LayerReport): Its report.

        Returns:
            str: The layer file.
        """
        fields = asdict(report)
        data = dict(
            version=JOURNAL_VERSION, name=name,
            qweight=qweight.detach().cpu().clone(),
            scale=scale.detach().cpu().clone(),
            act=None if act is None else [float(act[0]), bool(act[1])],
            w_bits=int(w_bits),
            report={k: fields[k] for k in _REPORT_FIELDS})
        buf = io.BytesIO()
        torch.save(data, buf)
        payload = buf.getvalue()
        self.written += 1
        crash = _hook(_EXIT_DURING) == self.written

        def write(f: IO[bytes]) -> None:
            if crash:  # test hook: a kill in the middle of the write
                f.write(payload[:len(payload) // 2])
                f.flush()
                os._exit(TEST_EXIT_STATUS)
            f.write(payload)

        path = osp.join(self.root, _file_name(name))
        atomic_write(path, write)
        self.entries[name] = JournalEntry(name, data['qweight'],
                                          data['scale'], act, w_bits,
                                          data['report'])
        if _hook(_EXIT_AFTER) == self.written:
            os._exit(TEST_EXIT_STATUS)
        return path


def _hook(var: str) -> Optional[int]:
    """The value of a test hook's environment variable."""
    text = os.environ.get(var, '').strip()
    return int(text) if text.isdigit() else None


def run_fingerprint(config_text: str, quantizer: Dict[str, Any],
                    float_checkpoint_sha256: Optional[str],
                    calibration: str, calib_samples: int,
                    calib_batch_size: Optional[int]) -> Dict[str, Any]:
    """What a resumed run must share with the interrupted one.

    Args:
        config_text (str): The config as run (``Config.pretty_text``).
        quantizer (dict): The quantizer's settings after the
            command-line overrides.
        float_checkpoint_sha256 (str, optional): The float checkpoint's
            sha256.
        calibration (str): :func:`calibration_sha256` of the batches.
        calib_samples (int): The calibration samples asked for.
        calib_batch_size (int, optional): The batch size asked for.

    Returns:
        dict: The fingerprint.
    """
    return dict(
        config_sha256=hashlib.sha256(config_text.encode()).hexdigest(),
        quantizer=json.loads(json.dumps(quantizer, sort_keys=True,
                                        default=repr)),
        float_checkpoint_sha256=float_checkpoint_sha256,
        calibration_sha256=calibration,
        calib_samples=calib_samples,
        calib_batch_size=calib_batch_size)
