"""The layer kinds mmquant quantizes and their conv2d-equivalent weights.

A ``Conv1d`` is solved as a conv2d with a ``(1, k)`` kernel, a
``ConvTranspose2d`` as the conv2d over its zero-inserted input with the
flipped, group-transposed kernel, the ``in_proj_weight`` ``(3E, E)`` of an
``nn.MultiheadAttention`` as a 1x1 conv with three groups (query, key and
value projections, each on its own input); output channels are along dim 0
of the equivalent weight, so per-output-channel scales apply there.
"""
from torch import Tensor, nn

__all__ = [
    'QUANTIZABLE', 'layer_kind', 'conv2d_weight', 'layer_weight',
    'out_channels', 'weight_name', 'groups_of'
]

#: The layer types mmquant quantizes (subclasses included).
QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def layer_kind(module: nn.Module) -> str:
    """The kind of a quantizable layer.

    Args:
        module (nn.Module): A layer of :data:`QUANTIZABLE`.

    Returns:
        str: ``'linear'``, ``'conv2d'``, ``'conv1d'``,
        ``'conv_transpose2d'`` or ``'mha_in'`` (the ``in_proj_weight`` of
        an ``nn.MultiheadAttention``).

    Raises:
        TypeError: For any other module.
    """
    if isinstance(module, nn.Linear):
        return 'linear'
    if isinstance(module, nn.Conv2d):
        return 'conv2d'
    if isinstance(module, nn.Conv1d):
        return 'conv1d'
    if isinstance(module, nn.ConvTranspose2d):
        return 'conv_transpose2d'
    if isinstance(module, nn.MultiheadAttention):
        return 'mha_in'
    raise TypeError('mmquant quantizes nn.Conv1d, nn.Conv2d, '
                    f'nn.ConvTranspose2d and nn.Linear, got '
                    f'{type(module).__name__}')


def conv2d_weight(weight: Tensor, kind: str, groups: int = 1) -> Tensor:
    """The weight of the conv2d (or linear) problem a layer solves.

    A ``Conv1d`` weight ``(M, C/G, k)`` becomes ``(M, C/G, 1, k)``; a
    ``ConvTranspose2d`` weight ``(C, M/G, kh, kw)`` becomes the flipped,
    group-transposed ``(M, C/G, kh, kw)`` of the equivalent conv over the
    zero-inserted input (the capture's ``OpCall`` holds that input).

    Args:
        weight (Tensor): The layer's weight (or integers of its shape).
        kind (str): See :func:`layer_kind`.
        groups (int): The layer's groups. Defaults to 1.

    Returns:
        Tensor: The equivalent weight; output channels along dim 0.
    """
    if kind == 'conv1d':
        return weight.unsqueeze(2)
    if kind == 'mha_in':
        return weight.reshape(weight.shape[0], -1, 1, 1)
    if kind == 'conv_transpose2d':
        cin, mg, kh, kw = weight.shape
        return weight.reshape(groups, cin // groups, mg, kh, kw).transpose(
            1, 2).reshape(groups * mg, cin // groups, kh,
                          kw).flip(-2, -1)
    return weight


def layer_weight(weight2d: Tensor, kind: str, groups: int = 1) -> Tensor:
    """Inverse of :func:`conv2d_weight`.

    Args:
        weight2d (Tensor): An equivalent conv2d (or linear) weight.
        kind (str): See :func:`layer_kind`.
        groups (int): The layer's groups. Defaults to 1.

    Returns:
        Tensor: The same values in the layer's own weight layout.
    """
    if kind == 'conv1d':
        return weight2d.squeeze(2)
    if kind == 'mha_in':
        return weight2d.reshape(weight2d.shape[0], -1)
    if kind == 'conv_transpose2d':
        m, cg, kh, kw = weight2d.shape
        return weight2d.flip(-2, -1).reshape(groups, m // groups, cg, kh,
                                             kw).transpose(1, 2).reshape(
                                                 groups * cg, m // groups,
                                                 kh, kw)
    return weight2d


def out_channels(module: nn.Module) -> int:
    """Output channels (per-channel scales) of a quantizable layer.

    Args:
        module (nn.Module): A layer of :data:`QUANTIZABLE`.

    Returns:
        int: ``out_features`` or ``out_channels``.
    """
    kind = layer_kind(module)
    if kind == 'linear':
        return module.out_features
    if kind == 'mha_in':
        return 3 * module.embed_dim
    return module.out_channels


def weight_name(module: nn.Module) -> str:
    """The name of the parameter a quantizable layer quantizes.

    Args:
        module (nn.Module): A layer of :data:`QUANTIZABLE` or an
            ``nn.MultiheadAttention``.

    Returns:
        str: ``'in_proj_weight'`` for an ``nn.MultiheadAttention``, else
        ``'weight'``.
    """
    return 'in_proj_weight' if isinstance(module,
                                          nn.MultiheadAttention) else 'weight'


def groups_of(module: nn.Module) -> int:
    """Groups of the conv2d-equivalent problem (3 for attention)."""
    if isinstance(module, nn.MultiheadAttention):
        return 3
    return getattr(module, 'groups', 1)
