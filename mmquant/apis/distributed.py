"""Launching ``tools/ptq.py`` and ``tools/test.py`` on several processes.

The OpenMMLab way (``tools/dist_ptq.sh``, ``tools/slurm_ptq.sh``,
``--launcher {pytorch,slurm,mpi}``): every process runs the tool; the
calibration itself is :mod:`mmquant.quantization.distributed`. Here:

* :func:`init_distributed`: mmengine's ``init_dist`` with the NCCL
  backend where CUDA is available, else a gloo process group from the same
  environment variables (mmengine's launchers set a CUDA device, which a
  CPU-only machine does not have);
* :func:`shard_calib_loader`: the rank's contiguous block of calibration
  batches;
* :func:`calibrate_shard`: what a rank other than 0 runs: the same model,
  quantizer and calibration set as rank 0, its shard only, nothing
  written;
* :func:`rank_guard` and :func:`sync_ranks`: a rank that fails before
  the calibration starts tells the other ranks (at the next status
  exchange: before the datasets are built, or the calibration's first),
  which then fail naming it instead of waiting.
"""
import contextlib
import datetime
import os
import subprocess
from typing import Any, Dict, Iterator, Optional

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from torch.utils.data import DataLoader, Subset

from mmquant.quantization.distributed import (DistributedCalibration,
                                              DistributedRunError,
                                              shard_range)

__all__ = [
    'LAUNCHERS', 'init_distributed', 'shard_calib_loader',
    'calibrate_shard', 'rank_guard', 'sync_ranks'
]

#: The ``--launcher`` choices of the tools.
LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def init_distributed(launcher: str, backend: Optional[str] = None,
                     timeout_s: int = 1800) -> int:
    """Join the process group of a launcher; returns this process's rank.

    Args:
        launcher (str): ``'pytorch'`` (``torchrun`` or
            ``torch.distributed.launch``: ``RANK``, ``WORLD_SIZE``,
            ``MASTER_ADDR``, ``MASTER_PORT``), ``'slurm'`` (``srun``:
            ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_NODELIST``;
            ``MASTER_PORT`` defaults to 29500) or ``'mpi'`` (Open MPI's
            ``OMPI_COMM_WORLD_*``). ``'none'`` joins nothing.
        backend (str, optional): ``'nccl'`` or ``'gloo'``; defaults to
            NCCL with CUDA, else gloo.
        timeout_s (int): Seconds a collective may wait for the other
            ranks. Defaults to 1800.

    Returns:
        int: The rank (0 for ``'none'``).

    Raises:
        ValueError: For an unknown launcher.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher must be one of {LAUNCHERS}, got '
                         f'{launcher!r}')
    if launcher == 'none':
        return 0
    import torch.distributed as dist
    if dist.is_initialized():
        return dist.get_rank()
    if torch.cuda.is_available():
        from mmengine.dist import init_dist
        init_dist(launcher, backend=backend or 'nccl', timeout=timeout_s)
        return dist.get_rank()
    env = os.environ
    if launcher == 'slurm':
        nodes = env['SLURM_NODELIST']
        env.setdefault('MASTER_ADDR', subprocess.getoutput(
            f'scontrol show hostname {nodes} | head -n1'))
        env.setdefault('MASTER_PORT', '29500')
        env['RANK'] = env['SLURM_PROCID']
        env['WORLD_SIZE'] = env['SLURM_NTASKS']
        env['LOCAL_RANK'] = env.get('SLURM_LOCALID', '0')
    elif launcher == 'mpi':
        env.setdefault('MASTER_ADDR', '127.0.0.1')
        env.setdefault('MASTER_PORT', '29500')
        env['RANK'] = env['OMPI_COMM_WORLD_RANK']
        env['WORLD_SIZE'] = env['OMPI_COMM_WORLD_SIZE']
        env['LOCAL_RANK'] = env.get('OMPI_COMM_WORLD_LOCAL_RANK', '0')
    dist.init_process_group(
        backend or 'gloo', rank=int(env['RANK']),
        world_size=int(env['WORLD_SIZE']),
        timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank()


def shard_calib_loader(loader: DataLoader) -> DataLoader:
    """This rank's contiguous block of a calibration loader's batches.

    Outside a process group of several ranks, ``loader`` itself.

    Args:
        loader (DataLoader): The unshuffled loader of
            :func:`~mmquant.apis.calibration.build_calib_dataloader`.

    Returns:
        DataLoader: A loader over the samples of batches
        :func:`~mmquant.quantization.distributed.shard_range` gives the
        rank; the ranks' blocks, in rank order, are ``loader``'s batches.

    Raises:
        ValueError: If a rank would get no batch.
    """
    group = DistributedCalibration.current()
    if group is None:
        return loader
    bs = loader.batch_size
    total = len(loader.dataset)
    start, stop = shard_range(len(loader), group.rank, group.world_size)
    return DataLoader(
        Subset(loader.dataset, range(start * bs, min(stop * bs, total))),
        batch_size=bs, shuffle=False, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn)


def sync_ranks() -> None:
    """Wait until every rank reaches this point; raise if one failed.

    The tools call it before building the calibration dataset, whose
    construction may run collectives of its own (mmpretrain's MNIST
    datasets call ``dist.barrier()``): a rank that failed its checks is
    reported here instead of leaving the others in that barrier. Outside
    a process group it does nothing.

    Raises:
        DistributedRunError: If another rank failed before this point.
    """
    group = DistributedCalibration.current()
    if group is not None:
        group.sync()


@contextlib.contextmanager
def rank_guard() -> Iterator[None]:
    """Tell the other ranks of an error raised before the calibration.

    Inside a process group, a rank whose block raises before its
    calibration started joins the calibration's first status exchange
    with the error, so the other ranks stop with
    :class:`~mmquant.quantization.distributed.DistributedRunError` naming
    it; errors inside the calibration are exchanged there already.
    Outside a process group it does nothing.

    Yields:
        None
    """
    try:
        yield
    except DistributedRunError:
        raise  # another rank failed: every rank knows
    except BaseException as err:
        group = DistributedCalibration.current()
        if group is not None and not DistributedCalibration.runs:
            group.fail_peers(err)
        raise


def calibrate_shard(cfg: Config, checkpoint: Optional[str],
                    quantizer_overrides: Optional[Dict[str, Any]] = None,
                    calib_samples: int = 256,
                    calib_batch_size: Optional[int] = None,
                    device: Optional[str] = None) -> None:
    """A rank's part of ``tools/ptq.py``'s run; writes nothing.

    Builds what :func:`~mmquant.apis.ptq.run_ptq` builds on rank 0 (the
    quantizer, the float model with its checkpoint, the seeded calibration
    set) and calibrates on this rank's block of batches; rank 0 writes
    the INT checkpoint, the report and the logs.

    Args:
        cfg (Config): The config.
        checkpoint (str, optional): The float checkpoint.
        quantizer_overrides (dict, optional): As for ``run_ptq``.
        calib_samples (int): Calibration images of all ranks together.
        calib_batch_size (int, optional): Overrides the batch size.
        device (str, optional): As for ``run_ptq``.
    """
    from .calibration import (build_calib_dataloader, build_forward_fn,
                              preprocess_batches)
    from .ptq import (build_datasets, build_float_model, build_quantizer,
                      load_strict, read_float_checkpoint, resolve_device)
    quantizer = build_quantizer(cfg, quantizer_overrides)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    sync_ranks()  # rank 0's checks passed: build the data with it
    calib_cfg, _ = build_datasets(cfg, False)
    model = build_float_model(cfg)
    if checkpoint is not None:
        state, _, _ = read_float_checkpoint(checkpoint)
        load_strict(model, state, checkpoint)
        del state
    model.to(resolve_device(device))
    loader = shard_calib_loader(build_calib_dataloader(
        calib_cfg, calib_samples, quantizer.config.seed, calib_batch_size))
    batches = preprocess_batches(model, loader)
    quantizer.quantize(model, batches, build_forward_fn(model, batches))
    MMLogger.get_current_instance().info(
        'mmquant: calibration shard done; rank 0 writes the results')
