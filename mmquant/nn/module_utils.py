"""Walking and editing a model's module tree by dotted name (pure torch)."""
import torch.nn as nn

from .quantized_layer import QuantizedLayer


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule ``name`` of ``model`` with ``new``.

    Args:
        model (nn.Module): The root module.
        name (str): Dotted name of an existing submodule (not ``''``).
        new (nn.Module): The replacement.
    """
    parent_name, _, child = name.rpartition('.')
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def inside_quantized(model: nn.Module, name: str) -> bool:
    """Whether a strict ancestor of submodule ``name`` is a QuantizedLayer.

    Args:
        model (nn.Module): The root module.
        name (str): Dotted name of a submodule.

    Returns:
        bool: True when the module lives inside an already swapped layer
        (for example the float ``conv`` a :class:`QuantizedLayer` wraps).
    """
    module = model
    for part in name.split('.')[:-1]:
        module = getattr(module, part)
        if isinstance(module, QuantizedLayer):
            return True
    return False
