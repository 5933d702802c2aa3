"""Benchmark and ablation lists: the models and variants to run.

A benchmark list is an mmengine config with ``models`` (a list of dicts
with ``name``, ``config``, ``checkpoint``, optional ``dataset``) and
optionally ``methods``, ``bits``, ``calib_samples``, ``eval_samples`` and
``entry_configs``. An ablation list is a benchmark list with ``variants``:
named sets of quantizer settings merged over each model config's
``quantizer`` (and over the mode's and the bits' settings).
"""
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmengine.config import Config

from mmquant.quantization.config import QuantConfig


@dataclass
class BenchmarkModel:
    """One model of a benchmark list.

    Args:
        name (str): Name shown in the tables.
        config (str): The model config (mmpretrain or mmdet).
        checkpoint (str): Its float checkpoint.
        dataset (str): Dataset name for the tables and the metafile.
    """

    name: str
    config: str
    checkpoint: str
    dataset: str = ''


@dataclass
class Variant:
    """One set of settings of an ablation.

    Args:
        name (str): Short name (a column of the tables).
        quantizer (dict): Quantizer settings merged over the model's.
        title (str): Longer description for the legend.
    """

    name: str
    quantizer: Dict[str, Any] = field(default_factory=dict)
    title: str = ''


def load_benchmark_list(path: str) -> Tuple[List[BenchmarkModel], Config]:
    """Read a benchmark list config.

    Args:
        path (str): The list config (``models = [dict(name, config,
            checkpoint, dataset), ...]``).

    Returns:
        tuple: The models and the whole config (for defaults).
    """
    cfg = Config.fromfile(path)
    entries = cfg.get('models')
    if not entries:
        raise ValueError(f'{path}: a benchmark list needs a non-empty '
                         '`models` list')
    models = []
    for i, entry in enumerate(entries):
        missing = [k for k in ('name', 'config', 'checkpoint')
                   if not entry.get(k)]
        if missing:
            raise ValueError(f'{path}: models[{i}] lacks {missing}')
        unknown = set(entry) - {'name', 'config', 'checkpoint', 'dataset'}
        if unknown:
            raise ValueError(f'{path}: models[{i}] has unknown keys '
                             f'{sorted(unknown)}')
        models.append(BenchmarkModel(**dict(entry)))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f'{path}: model names must be unique: {names}')
    return models, cfg


def select_models(models: Sequence[BenchmarkModel],
                  names: Optional[Sequence[str]]) -> List[BenchmarkModel]:
    """The models of a list with the given names (all for ``None``).

    Args:
        models (Sequence[BenchmarkModel]): The list's models.
        names (Sequence[str], optional): Names to keep (``--models``).

    Returns:
        list[BenchmarkModel]: The selected models, in the list's order.

    Raises:
        ValueError: Naming the unknown names and the list's names.
    """
    if not names:
        return list(models)
    known = {m.name for m in models}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f'unknown model name(s) {unknown}; the list has '
                         f'{sorted(known)}')
    return [m for m in models if m.name in names]


def load_variants(cfg: Config) -> List[Variant]:
    """Read and validate the ``variants`` of an ablation list.

    Args:
        cfg (Config): The ablation list.

    Returns:
        list[Variant]: The variants, in the list's order.

    Raises:
        ValueError: If there are none, a name repeats or is reserved, or
            a variant's settings are not valid :class:`QuantConfig` keys.
    """
    entries = cfg.get('variants')
    if not entries:
        raise ValueError(f'{cfg.filename}: an ablation list needs a '
                         'non-empty `variants` list')
    variants = []
    for i, entry in enumerate(entries):
        unknown = set(entry) - {'name', 'quantizer', 'title'}
        if unknown or not entry.get('name'):
            raise ValueError(f'{cfg.filename}: variants[{i}] needs a name '
                             'and only name/quantizer/title, got '
                             f'{sorted(entry)}')
        settings = dict(entry.get('quantizer') or {})
        QuantConfig.from_dict(settings)  # names a bad key or value
        variants.append(Variant(str(entry['name']), settings,
                                str(entry.get('title', ''))))
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or 'float' in names:
        raise ValueError(f'{cfg.filename}: variant names must be unique '
                         f'and not "float": {names}')
    return variants


def replace_data_root(cfg: Config, data_root: str) -> Config:
    """Point every path under the config's ``data_root`` to another root.

    The config's top-level ``data_root`` variable names the old root; every
    string in the config that starts with it (dataset roots, COCO
    annotation files of the evaluators) is rewritten.

    Args:
        cfg (Config): The model config.
        data_root (str): The new root.

    Returns:
        Config: A new config.
    """
    old = cfg.get('data_root')
    if not old:
        raise ValueError(f'{cfg.filename}: --data-root needs the config to '
                         'define a top-level `data_root`')
    old_norm = old.rstrip('/')
    new_norm = data_root.rstrip('/')

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(v) for v in value)
        if isinstance(value, str) and (value == old or value.startswith(
                old_norm + '/') or value == old_norm):
            return new_norm + value[len(old_norm):]
        return value

    new = Config(walk(cfg.to_dict()), filename=cfg.filename)
    return new


def slug(name: str) -> str:
    """A model name as a file and metafile-entry name.

    Args:
        name (str): e.g. ``'ResNet-18 (16 ch)'``.

    Returns:
        str: Runs of other characters than ``[A-Za-z0-9._-]`` become
        ``_`` (``'ResNet-18_16_ch'``); ``'model'`` if nothing is left.
    """
    return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_') or 'model'
