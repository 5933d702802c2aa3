"""Sufficient statistics of a conv/linear layer for the BitSplit solver.

For a layer with (per group) input rows ``X`` (``K x N``: im2col patches of
a conv, tokens/samples of a linear layer) and target outputs ``Y``
(``K x M/G``, without bias), the solver only needs::

    A = X^T X   (N x N)     C = X^T Y   (N x M/G)     yy = sum_k y_k^2

:class:`StatsAccumulator` builds them by streaming over calibration batches,
in constant memory (``A`` dominates: ``8 N^2`` bytes per group in float64),
optionally keeping a seeded uniform random subset of rows per batch.
Statistics of several accumulators (e.g. one per process) simply add up
(:meth:`StatsAccumulator.merge`, or an all-reduce of ``A``, ``C``, ``yy``
and ``n_rows``).
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_finite, to_pair

__all__ = [
    'GRAM_BLOCK', 'LayerGeometry', 'StatsAccumulator', 'StatsMemoryError',
    'add_gram_upper', 'estimate_stats_bytes', 'gram_blocks', 'mirror_upper'
]

_PAD_MODES = ('zeros', 'reflect', 'replicate', 'circular')
# Largest im2col chunk materialised at once (elements, float64 compute).
_CHUNK_ELEMS = 1 << 23
# Columns per block of the symmetric product X^T X: only the blocks on
# and above the diagonal are computed (see gram_blocks).
GRAM_BLOCK = 1024


def gram_blocks(n: int, block: int = GRAM_BLOCK) -> List[int]:
    """Column edges of the blocks of an ``n x n`` Gram matrix.

    Args:
        n (int): Columns.
        block (int): Most columns per block. Defaults to
            :data:`GRAM_BLOCK`.

    Returns:
        list[int]: ``[0, ..., n]``: ``ceil(n / block)`` blocks of equal
        size (within one column).
    """
    nb = max(1, -(-n // block))
    return [round(i * n / nb) for i in range(nb + 1)]


def add_gram_upper(A: Tensor, x: Tensor, edges: Sequence[int]) -> None:
    """``A += x^T x`` on the blocks on and above the diagonal only.

    A symmetric product needs ``(nb + 1) / (2 nb)`` of the multiply-adds
    of the full one (``nb`` blocks); :func:`mirror_upper` fills the rest.

    Args:
        A (Tensor): ``(G, N, N)``, updated in place.
        x (Tensor): ``(G, K, N)`` rows.
        edges (Sequence[int]): Block edges (:func:`gram_blocks`).
    """
    spans = list(zip(edges[:-1], edges[1:]))
    for i, (a0, a1) in enumerate(spans):
        xi = x[:, :, a0:a1].transpose(1, 2)
        for b0, b1 in spans[i:]:
            A[:, a0:a1, b0:b1].baddbmm_(xi, x[:, :, b0:b1])


def mirror_upper(A: Tensor, edges: Sequence[int]) -> None:
    """Copy the blocks above the diagonal of ``A`` to those below.

    Args:
        A (Tensor): ``(G, N, N)``, updated in place.
        edges (Sequence[int]): Block edges (:func:`gram_blocks`).
    """
    spans = list(zip(edges[:-1], edges[1:]))
    for i, (a0, a1) in enumerate(spans):
        for b0, b1 in spans[i + 1:]:
            A[:, b0:b1, a0:a1] = A[:, a0:a1, b0:b1].transpose(1, 2)


class StatsMemoryError(ValueError, MemoryError):
    """The statistics of a layer would exceed the memory budget.

    Subclasses both :class:`ValueError` and :class:`MemoryError`.
    """


@dataclass
class LayerGeometry:
    """Shape parameters of a conv2d or linear layer.

    Attributes:
        kind (str): ``'conv'`` or ``'linear'``.
        in_channels (int): Input channels (``in_features`` for linear).
        out_channels (int): Output channels (``out_features`` for linear).
        kernel_size (tuple[int, int]): ``(kh, kw)`` (``(1, 1)`` for linear).
        stride (tuple[int, int]): ``(sh, sw)``.
        padding (tuple[int]): ``(ph, pw)`` (symmetric), or ``(left, right, top,
            bottom)`` for the asymmetric ``padding='same'`` of even
            kernels.
        dilation (tuple[int, int]): ``(dh, dw)``.
        groups (int): Number of groups (``1`` for linear).
        padding_mode (str): ``'zeros'``, ``'reflect'``, ``'replicate'`` or
            ``'circular'``.
    """
    kind: str
    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, int] = (1, 1)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, ...] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    padding_mode: str = 'zeros'

    def __post_init__(self) -> None:
        if self.kind not in ('conv', 'linear'):
            raise ValueError(f"kind must be 'conv' or 'linear', "
                             f'got {self.kind!r}')
        self.kernel_size = to_pair(self.kernel_size, 'kernel_size')[:2]
        self.stride = to_pair(self.stride, 'stride')[:2]
        self.dilation = to_pair(self.dilation, 'dilation')[:2]
        if isinstance(self.padding, str):
            self.padding = self._resolve_padding(self.padding)
        self.padding = to_pair(self.padding, 'padding')
        if len(self.padding) == 4 and (self.padding[0] == self.padding[1]
                                       and self.padding[2]
                                       == self.padding[3]):
            self.padding = (self.padding[2], self.padding[0])
        self.groups = int(self.groups)
        if self.in_channels <= 0 or self.out_channels <= 0 or (self.groups
                                                               <= 0):
            raise ValueError('channels and groups must be positive')
        if (self.in_channels % self.groups
                or self.out_channels % self.groups):
            raise ValueError(
                f'in_channels ({self.in_channels}) and out_channels '
                f'({self.out_channels}) must be divisible by groups '
                f'({self.groups})')
        if self.padding_mode not in _PAD_MODES:
            raise ValueError(f'padding_mode must be one of {_PAD_MODES}, '
                             f'got {self.padding_mode!r}')
        if self.kind == 'linear' and (self.groups != 1
                                      or self.kernel_size != (1, 1)):
            raise ValueError('a linear layer has groups=1 and no kernel')

    def _resolve_padding(self, mode: str) -> Tuple[int, ...]:
        """Explicit padding for ``padding='same'`` or ``'valid'``."""
        if mode == 'valid':
            return (0, 0)
        if mode != 'same':
            raise ValueError(f"padding must be ints, 'same' or 'valid', "
                             f'got {mode!r}')
        if self.stride != (1, 1):
            raise ValueError("padding='same' needs stride 1")
        pads = []
        for k, d in ((self.kernel_size[1], self.dilation[1]),
                     (self.kernel_size[0], self.dilation[0])):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # left, right, top, bottom

    @classmethod
    def from_module(cls, module: nn.Module) -> 'LayerGeometry':
        """Geometry of an ``nn.Conv2d`` (or subclass) or ``nn.Linear``.

        Args:
            module (nn.Module): The layer.

        Returns:
            LayerGeometry: Its geometry.

        Raises:
            TypeError: For any other module type.
        """
        if isinstance(module, nn.Conv2d):
            if isinstance(module.padding, str):
                # left, right, top, bottom as F.pad expects them
                rev = module._reversed_padding_repeated_twice
                padding = tuple(int(p) for p in rev)
            else:
                padding = tuple(module.padding)
            return cls(
                kind='conv',
                in_channels=module.in_channels,
                out_channels=module.out_channels,
                kernel_size=tuple(module.kernel_size),
                stride=tuple(module.stride),
                padding=padding,
                dilation=tuple(module.dilation),
                groups=module.groups,
                padding_mode=module.padding_mode)
        if isinstance(module, nn.Linear):
            return cls(
                kind='linear',
                in_channels=module.in_features,
                out_channels=module.out_features)
        raise TypeError('LayerGeometry supports nn.Conv2d and nn.Linear '
                        f'(and subclasses), got {type(module).__name__}')

    @property
    def n_per_group(self) -> int:
        """Columns ``N`` of one group's input rows."""
        if self.kind == 'linear':
            return self.in_channels
        kh, kw = self.kernel_size
        return self.in_channels // self.groups * kh * kw

    @property
    def m_per_group(self) -> int:
        """Output channels of one group."""
        return self.out_channels // self.groups

    @property
    def pad4(self) -> Tuple[int, int, int, int]:
        """Padding as ``(left, right, top, bottom)`` (``F.pad`` order)."""
        if len(self.padding) == 4:
            return tuple(self.padding)  # type: ignore[return-value]
        ph, pw = self.padding
        return (pw, pw, ph, ph)


def estimate_stats_bytes(geom: LayerGeometry) -> int:
    """Bytes of ``A``, ``C`` and ``yy`` of a layer in float64.

    Args:
        geom (LayerGeometry): The layer geometry.

    Returns:
        int: ``8 * G * (N^2 + N * M/G + M/G)``.
    """
    G, N, Mg = geom.groups, geom.n_per_group, geom.m_per_group
    return 8 * G * (N * N + N * Mg + Mg)


class StatsAccumulator:
    """Streaming ``A = X^T X``, ``C = X^T Y``, ``yy`` of one layer.

    Memory: ``A`` is ``(G, N, N)``, ``C`` ``(G, N, M/G)``, ``yy``
    ``(G, M/G)``; see :func:`estimate_stats_bytes` (a 3x3 conv with 512
    input channels has ``N = 4608``: 170 MB for ``A`` in float64). The
    im2col rows are materialised in chunks of at most ``2**23`` elements.

    ``A`` is symmetric: above :data:`GRAM_BLOCK` columns, each chunk's
    product is computed on the blocks on and above the diagonal only
    (:func:`add_gram_upper`, about 0.6 of the multiply-adds at
    ``N = 4608``), and the blocks below are copied from them when ``A``
    is read. Each entry is a float64 dot product over the same rows as
    in one product of the whole matrix; its rounding may differ from that
    one's in the last bits (a block's kernel may order the sums
    differently; measured: at most 7e-16 of the largest entry).

    Args:
        geom (LayerGeometry): The layer geometry.
        rows_per_batch (int, optional): If set, keep a uniform random
            subset (without replacement) of this many rows of every batch.
        generator (torch.Generator, optional): CPU generator for the row
            subset (seed it for reproducible statistics).
        max_bytes (int, optional): Memory budget of the statistics; a
            layer above it is refused with :class:`StatsMemoryError`.
        dtype (torch.dtype): Accumulation (and product) dtype; float64 by
            default, which the accuracy of W8 and of the objective
            bookkeeping needs.
        device (str | torch.device, optional): Where ``A``, ``C`` and
            ``yy`` are allocated (default: CPU); the first rows accumulated
            move them to their device anyway, so passing it only avoids a
            CPU allocation and copy.

    Attributes:
        A (Tensor): ``(G, N, N)`` accumulated ``X^T X``.
        C (Tensor): ``(G, N, M/G)`` accumulated ``X^T Y``.
        yy (Tensor): ``(G, M/G)`` accumulated ``sum y^2``.
        n_rows (int): Number of rows accumulated.

    Raises:
        StatsMemoryError: If the statistics exceed ``max_bytes``.
    """

    def __init__(self,
                 geom: LayerGeometry,
                 rows_per_batch: Optional[int] = None,
                 generator: Optional[torch.Generator] = None,
                 max_bytes: Optional[int] = None,
                 dtype: torch.dtype = torch.float64,
                 device: Optional[Union[str, torch.device]] = None
                 ) -> None:
        self.geom = geom
        need = estimate_stats_bytes(geom)
        if max_bytes is not None and need > max_bytes:
            raise StatsMemoryError(
                f'statistics of this {geom.kind} layer need {need} bytes '
                f'(groups={geom.groups}, N={geom.n_per_group} per group, '
                f'A is G x N x N float64), above the budget of {max_bytes} '
                'bytes; raise max_stats_bytes or skip this layer / quantize '
                'it with RTN')
        if rows_per_batch is not None and int(rows_per_batch) <= 0:
            raise ValueError('rows_per_batch must be positive or None')
        self.rows_per_batch = (None if rows_per_batch is None else
                               int(rows_per_batch))
        self.generator = generator
        self.dtype = dtype
        G, N, Mg = geom.groups, geom.n_per_group, geom.m_per_group
        self._edges = gram_blocks(N)
        self._lower_stale = False
        self.A = torch.zeros(G, N, N, dtype=dtype, device=device)
        self.C = torch.zeros(G, N, Mg, dtype=dtype, device=device)
        self.yy = torch.zeros(G, Mg, dtype=dtype, device=device)
        self.n_rows = 0

    @property
    def A(self) -> Tensor:
        """``(G, N, N)`` accumulated ``X^T X`` (symmetric)."""
        if self._lower_stale:
            mirror_upper(self._A, self._edges)
            self._lower_stale = False
        return self._A

    @A.setter
    def A(self, value: Tensor) -> None:
        self._A = value
        self._lower_stale = False

    # -- helpers ---------------------------------------------------------
    def _to(self, device: torch.device) -> None:
        """Move ``A``, ``C`` and ``yy`` to ``device``."""
        if self.A.device != device:
            self.A = self.A.to(device)
            self.C = self.C.to(device)
            self.yy = self.yy.to(device)

    def _pick(self, total: int) -> Optional[Tensor]:
        """Sorted row indices to keep out of ``total`` (None: all)."""
        k = self.rows_per_batch
        if k is None or k >= total:
            return None
        perm = torch.randperm(total, generator=self.generator)
        return perm[:k].sort().values

    def _accumulate(self, x: Tensor, y: Tensor) -> None:
        """Add rows ``x (K, G*N)``, ``y (K, M)``."""
        if x.shape[0] == 0:
            return
        G, N, Mg = self.geom.groups, self.geom.n_per_group, \
            self.geom.m_per_group
        xg = x.to(self.dtype).reshape(-1, G, N).transpose(0, 1)
        yg = y.to(self.dtype).reshape(-1, G, Mg).transpose(0, 1)
        add_gram_upper(self._A, xg, self._edges)
        self._lower_stale = len(self._edges) > 2
        self.C.baddbmm_(xg.transpose(1, 2), yg)
        self.yy.add_(yg.square().sum(dim=1))
        self.n_rows += x.shape[0]

    # -- public API ------------------------------------------------------
    def update(self, inputs: Tensor, outputs: Tensor) -> None:
        """Accumulate one batch.

        Args:
            inputs (Tensor): What the layer's conv/linear op sees: conv
                ``(B, Cin, H, W)`` before padding (the geometry's padding,
                including a non-zero ``padding_mode``, is applied here);
                linear ``(..., in_features)``.
            outputs (Tensor): Target outputs without bias: conv
                ``(B, Cout, Ho, Wo)``, linear ``(..., out_features)``.

        Raises:
            ValueError: On shape mismatch or NaN/Inf in either tensor.
        """
        inputs, outputs = inputs.detach(), outputs.detach()
        check_finite(inputs, 'inputs', 'cannot accumulate statistics',
                     plural=True)
        check_finite(outputs, 'outputs', 'cannot accumulate statistics',
                     plural=True)
        if self.n_rows == 0:
            self._to(inputs.device)
        inputs = inputs.to(self.A.device)
        outputs = outputs.to(self.A.device)
        if self.geom.kind == 'linear':
            self._update_linear(inputs, outputs)
        else:
            self._update_conv(inputs, outputs)

    def input_rows(self,
                   inputs: Tensor,
                   index: Optional[Tensor] = None) -> Tensor:
        """Input rows of a batch (im2col for a conv), all or some.

        Without ``index`` this materialises all ``B * Ho * Wo`` rows of
        ``Cin * kh * kw`` columns; with ``index`` only the selected rows
        are built (gathered from the padded input, no full im2col), equal
        element for element to ``input_rows(inputs)[index]``.

        Args:
            inputs (Tensor): As for :meth:`update`.
            index (Tensor, optional): 1-D integer tensor of row indices
                (any order, repeats allowed) into the rows of the whole
                batch.

        Returns:
            Tensor: ``(K, G * N)`` rows (image-major, then output rows,
            then output columns; or in ``index``'s order), in ``inputs``'
            dtype and device; they are widened to the accumulation dtype
            (float64) only in :meth:`update_rows`, so the rows of a
            half-precision layer can first be fake-quantized in that
            dtype, as the quantized layer does.

        Raises:
            ValueError: On a shape mismatch, or an ``index`` that is not
                1-D integer or is out of range.
        """
        g = self.geom
        x = inputs.detach()
        if g.kind == 'linear':
            if x.shape[-1] != g.in_channels:
                raise ValueError(f'linear inputs must end with '
                                 f'{g.in_channels} features, got '
                                 f'{tuple(x.shape)}')
            rows = x.reshape(-1, g.in_channels)
            if index is None:
                return rows
            return rows.index_select(
                0, self._check_index(index, rows.shape[0], rows.device))
        if index is not None:
            if x.dim() != 4 or x.shape[1] != g.in_channels:
                raise ValueError(f'conv inputs must be (B, {g.in_channels},'
                                 f' H, W), got {tuple(x.shape)}')
            return self._gather_patches(self._pad(x), index)
        x = self._pad(x)
        kh, kw = g.kernel_size
        patches = F.unfold(x, (kh, kw), dilation=g.dilation,
                           stride=g.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])

    def _out_size(self, xp: Tensor) -> Tuple[int, int]:
        """Output ``(Ho, Wo)`` of a padded conv input."""
        g = self.geom
        (kh, kw), (sh, sw), (dh, dw) = g.kernel_size, g.stride, g.dilation
        H, W = xp.shape[-2:]
        return ((H - dh * (kh - 1) - 1) // sh + 1,
                (W - dw * (kw - 1) - 1) // sw + 1)

    @staticmethod
    def _check_index(index: Tensor, total: int,
                     device: torch.device) -> Tensor:
        """Check row indices into ``total`` rows; as int64 on ``device``."""
        if index.dim() != 1 or index.dtype.is_floating_point or (
                index.dtype == torch.bool):
            raise ValueError('index must be a 1-D integer tensor, got '
                             f'{index.dtype} of shape {tuple(index.shape)}')
        index = index.to(device=device, dtype=torch.long)
        if index.numel() and (int(index.min()) < 0
                              or int(index.max()) >= total):
            raise ValueError(f'index out of range for {total} rows: '
                             f'[{int(index.min())}, {int(index.max())}]')
        return index

    def _gather_patches(self, xp: Tensor, index: Tensor) -> Tensor:
        """Rows ``index`` of the im2col of the padded input ``xp``.

        Reads each selected patch straight from ``xp`` (index
        arithmetic on a channels-last copy), so only the kept rows are
        built; the values are copies, bit-identical to :func:`F.unfold`'s.
        """
        g = self.geom
        (kh, kw), (sh, sw), (dh, dw) = g.kernel_size, g.stride, g.dilation
        B, Cin = xp.shape[:2]
        Ho, Wo = self._out_size(xp)
        L = Ho * Wo
        index = self._check_index(index, B * L, xp.device)
        b = index // L
        oh = index % L // Wo
        ow = index % Wo
        dev = xp.device
        hh = (oh * sh).unsqueeze(1) + torch.arange(
            0, kh * dh, dh, device=dev)  # (K, kh)
        ww = (ow * sw).unsqueeze(1) + torch.arange(
            0, kw * dw, dw, device=dev)  # (K, kw)
        xcl = xp.permute(0, 2, 3, 1)  # (B, Hp, Wp, Cin) view
        patches = xcl[b[:, None, None], hh[:, :, None], ww[:, None, :]]
        # (K, kh, kw, Cin) -> (K, Cin * kh * kw), unfold's column order
        return patches.permute(0, 3, 1, 2).reshape(-1, Cin * kh * kw)

    def output_rows(self, outputs: Tensor) -> Tensor:
        """Output rows of a batch, in the order of :meth:`input_rows`.

        Args:
            outputs (Tensor): As for :meth:`update`.

        Returns:
            Tensor: ``(K, M)`` rows.
        """
        g = self.geom
        y = outputs.detach()
        if g.kind == 'linear':
            return y.reshape(-1, g.out_channels)
        if y.dim() != 4 or y.shape[1] != g.out_channels:
            raise ValueError(f'conv outputs must be (B, {g.out_channels}, '
                             f'Ho, Wo), got {tuple(y.shape)}')
        return y.flatten(2).transpose(1, 2).reshape(-1, g.out_channels)

    def update_rows(self, x: Tensor, y: Tensor) -> None:
        """Accumulate explicit rows (no subsampling is applied).

        Args:
            x (Tensor): ``(K, G * N)`` input rows (see :meth:`input_rows`).
            y (Tensor): ``(K, M)`` target rows without bias.

        Raises:
            ValueError: On shape mismatch or NaN/Inf.
        """
        g = self.geom
        x, y = x.detach(), y.detach()
        cols = g.groups * g.n_per_group
        if x.dim() != 2 or x.shape[1] != cols:
            raise ValueError(f'input rows must be (K, {cols}), got '
                             f'{tuple(x.shape)}')
        if y.dim() != 2 or y.shape != (x.shape[0], g.out_channels):
            raise ValueError(f'output rows must be ({x.shape[0]}, '
                             f'{g.out_channels}), got {tuple(y.shape)}')
        check_finite(x, 'inputs', 'cannot accumulate statistics',
                     plural=True)
        check_finite(y, 'outputs', 'cannot accumulate statistics',
                     plural=True)
        if self.n_rows == 0:
            self._to(x.device)
        x, y = x.to(self.A.device), y.to(self.A.device)
        step = max(1, _CHUNK_ELEMS // max(1, cols))
        for r0 in range(0, x.shape[0], step):
            self._accumulate(x[r0:r0 + step], y[r0:r0 + step])

    def _pad(self, x: Tensor) -> Tensor:
        """The layer's padding applied to conv inputs ``x``."""
        pad = self.geom.pad4
        if not any(pad):
            return x
        if self.geom.padding_mode == 'zeros':
            return F.pad(x, pad)
        return F.pad(x, pad, mode=self.geom.padding_mode)

    def _update_linear(self, x: Tensor, y: Tensor) -> None:
        """Accumulate one batch of a linear layer."""
        g = self.geom
        if x.shape[-1] != g.in_channels or y.shape[-1] != g.out_channels:
            raise ValueError(
                f'linear inputs/outputs must end with {g.in_channels} / '
                f'{g.out_channels} features, got {tuple(x.shape)} / '
                f'{tuple(y.shape)}')
        x = x.reshape(-1, g.in_channels)
        y = y.reshape(-1, g.out_channels)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f'inputs have {x.shape[0]} rows but outputs '
                             f'have {y.shape[0]}')
        keep = self._pick(x.shape[0])
        if keep is not None:
            keep = keep.to(x.device)
            x, y = x.index_select(0, keep), y.index_select(0, keep)
        step = max(1, _CHUNK_ELEMS // max(1, g.in_channels))
        for r0 in range(0, x.shape[0], step):
            self._accumulate(x[r0:r0 + step], y[r0:r0 + step])

    def _update_conv(self, x: Tensor, y: Tensor) -> None:
        """Accumulate one batch of a conv layer."""
        g = self.geom
        if x.dim() != 4 or x.shape[1] != g.in_channels:
            raise ValueError(f'conv inputs must be (B, {g.in_channels}, H, '
                             f'W), got {tuple(x.shape)}')
        if y.dim() != 4 or y.shape[:2] != (x.shape[0], g.out_channels):
            raise ValueError(
                f'conv outputs must be ({x.shape[0]}, {g.out_channels}, Ho,'
                f' Wo), got {tuple(y.shape)}')
        x = self._pad(x)
        kh, kw = g.kernel_size
        sh, sw = g.stride
        dh, dw = g.dilation
        B, _, H, W = x.shape
        Ho = (H - dh * (kh - 1) - 1) // sh + 1
        Wo = (W - dw * (kw - 1) - 1) // sw + 1
        if (Ho, Wo) != tuple(y.shape[2:]):
            raise ValueError(
                f'conv outputs have spatial size {tuple(y.shape[2:])} but '
                f'the geometry gives ({Ho}, {Wo}) for inputs '
                f'{tuple(x.shape)} (after padding)')
        L = Ho * Wo
        cols = g.in_channels * kh * kw
        keep = self._pick(B * L)
        per_sample = L * cols
        if per_sample <= _CHUNK_ELEMS:
            # Whole images, several per chunk.
            step = max(1, _CHUNK_ELEMS // per_sample)
            chunks = [(b, min(B, b + step), 0, Ho) for b in range(0, B, step)]
        else:
            # Strips of output rows of one image.
            strip = max(1, _CHUNK_ELEMS // max(1, Wo * cols))
            chunks = [(b, b + 1, r, min(Ho, r + strip)) for b in range(B)
                      for r in range(0, Ho, strip)]
        for b0, b1, r0, r1 in chunks:
            # Global row range: image-major, then output rows, then columns.
            lo = b0 * L + r0 * Wo
            hi = (b1 - 1) * L + r1 * Wo
            if keep is not None:
                # only the kept rows of this chunk, gathered (same rows and
                # same chunks as im2col + index_select: identical sums)
                i0 = int(torch.searchsorted(keep, lo))
                i1 = int(torch.searchsorted(keep, hi))
                if i0 == i1:
                    continue
                sel = keep[i0:i1].to(x.device)
                self._accumulate(self._gather_patches(x, sel),
                                 y.permute(0, 2, 3, 1)[sel // L,
                                                       sel % L // Wo,
                                                       sel % Wo])
                continue
            xs = x[b0:b1, :, r0 * sh:(r1 - 1) * sh + dh * (kh - 1) + 1]
            patches = F.unfold(xs, (kh, kw), dilation=(dh, dw),
                               stride=(sh, sw))  # (b, cols, rows)
            patches = patches.transpose(1, 2).reshape(-1, cols)
            ys = y[b0:b1, :, r0:r1].flatten(2).transpose(1, 2).reshape(
                -1, g.out_channels)
            self._accumulate(patches, ys)

    def merge(self, other: 'StatsAccumulator') -> 'StatsAccumulator':
        """Add another accumulator's statistics into this one.

        Args:
            other (StatsAccumulator): Accumulator of the same layer
                geometry.

        Returns:
            StatsAccumulator: ``self``.
        """
        if other.geom != self.geom:
            raise ValueError('cannot merge statistics of different layers: '
                             f'{other.geom} vs {self.geom}')
        if other.n_rows == 0:
            return self
        if self.n_rows == 0:
            self._to(other.A.device)
        dev = self.A.device
        self.A += other.A.to(device=dev, dtype=self.A.dtype)
        self.C += other.C.to(device=dev, dtype=self.C.dtype)
        self.yy += other.yy.to(device=dev, dtype=self.yy.dtype)
        self.n_rows += other.n_rows
        return self

    def weight_matrix(self, weight: Tensor) -> Tensor:
        """View of a layer weight matching the im2col column order.

        Args:
            weight (Tensor): Conv ``(M, Cin/G, kh, kw)`` or linear ``(M, N)``.

        Returns:
            Tensor: ``(G, M/G, N)`` view of ``weight``.
        """
        g = self.geom
        if g.kind == 'linear':
            expect = (g.out_channels, g.in_channels)
        else:
            expect = (g.out_channels, g.in_channels // g.groups,
                      *g.kernel_size)
        if tuple(weight.shape) != expect:
            raise ValueError(f'weight must have shape {expect}, '
                             f'got {tuple(weight.shape)}')
        return weight.reshape(g.groups, g.m_per_group, g.n_per_group)
