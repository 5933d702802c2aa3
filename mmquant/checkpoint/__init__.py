"""INT checkpoints of quantized models and safe float checkpoint loading.

* :mod:`.packing`: dense bit packing of 2..8-bit narrow symmetric integers.
* :mod:`.errors`: :class:`CheckpointError` and its subclasses.
* :mod:`.safe_load`: weights-only ``torch.load`` of untrusted files with
  clear errors, shared by both loaders.
* :mod:`.container`: the ``mmquant-int`` file format, atomic save and
  verified load.
* :mod:`.float_loading`: weights-only loading of OpenMMLab float
  checkpoints with an explicit allowlist.
* :mod:`.int_model`: saving whole quantized models
  (``QuantizedLayer``\\ s) as INT checkpoints and loading them into
  float models.
* :mod:`.layer_records`: the per-layer records of an INT checkpoint and
  the checks of a file on its own.
* :mod:`.inspection`: verifying and summarising an INT checkpoint
  without a model.

The format is specified in ``docs/checkpoint_format.md``.
"""
from .container import (FORMAT_NAME, FORMAT_VERSION, MAX_META_BYTES,
                        MAX_META_DEPTH, SUPPORTED_FORMAT_VERSIONS,
                        TENSORS_DIGEST_KEY, load_container, save_container,
                        tensor_sha256, tensors_digest, verify_container)
from .errors import (CheckpointError, CheckpointNotFoundError,
                     UnsafeCheckpointError)
from .float_loading import (extract_state_dict, float_safe_globals,
                            load_float_checkpoint,
                            load_float_checkpoint_file, sha256_file)
from .inspection import inspect_quantized
from .int_model import (CheckpointMismatchError, apply_quantized,
                        load_quantized, save_quantized)
from .layer_records import PACKED_SUFFIX, RESERVED_META_KEYS
from .packing import (MAX_BITS, MIN_BITS, int_range, pack_int,
                      packed_nbytes, unpack_int)

__all__ = [
    'FORMAT_NAME', 'FORMAT_VERSION', 'SUPPORTED_FORMAT_VERSIONS',
    'CheckpointError', 'CheckpointNotFoundError', 'UnsafeCheckpointError',
    'save_container', 'load_container', 'verify_container', 'tensor_sha256',
    'tensors_digest', 'TENSORS_DIGEST_KEY', 'MAX_META_BYTES',
    'MAX_META_DEPTH',
    'load_float_checkpoint', 'load_float_checkpoint_file',
    'extract_state_dict', 'float_safe_globals', 'sha256_file', 'MIN_BITS',
    'MAX_BITS', 'int_range', 'pack_int', 'unpack_int', 'packed_nbytes',
    'CheckpointMismatchError', 'RESERVED_META_KEYS', 'PACKED_SUFFIX',
    'save_quantized', 'load_quantized', 'apply_quantized',
    'inspect_quantized'
]
