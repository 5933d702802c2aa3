"""The errors every reader of a checkpoint file raises.

:class:`CheckpointError` and its subclasses are shared by the safe reader
(:mod:`.safe_load`), the INT container (:mod:`.container`), float
checkpoint loading (:mod:`.float_loading`) and the model-level INT
checkpoint code (:mod:`.int_model`), so callers catch one family.
"""

__all__ = [
    'CheckpointError', 'CheckpointNotFoundError', 'UnsafeCheckpointError'
]


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupted, unsafe or of a wrong kind."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist.

    Also a :class:`FileNotFoundError`, so either can be caught.
    """


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled Python objects and is refused for safety."""
