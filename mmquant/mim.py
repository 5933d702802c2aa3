"""The configs and tools an installed mmquant ships, and how to reach them.

Like every OpenMMLab package, mmquant ships ``configs/``, ``tools/`` and
``model-index.yml`` inside the package, under ``mmquant/.mim/`` (copied
into a wheel when it is built, symbolic links to the checkout's folders in
an editable install; see ``setup.py``). This module finds them and
connects them to mmengine:

* :func:`register_config_package` lets configs name mmquant's configs as
  ``_base_ = 'mmquant::_base_/quantizers/bitsplit_w4a8.py'``;
* :func:`find_tool` and :func:`run_tool` run a shipped tool from any
  directory, which is what ``python -m mmquant TOOL ...`` does.

Nothing here runs on import.
"""
import os
import os.path as osp
import runpy
import sys
from typing import List, Optional

#: The package's folder of mim files.
MIM_DIR = '.mim'
#: The scope of ``'mmquant::path'`` config references, and the package
#: (distribution) name mmengine looks the configs up in.
PACKAGE = 'mmquant'


def shipped_path(name: str) -> str:
    """The folder or file ``name`` (``'configs'``, ``'tools'``) shipped.

    An installed package (wheel, sdist or editable install) has it in
    ``mmquant/.mim/``; a source checkout used without installing (on
    ``PYTHONPATH``) has it next to the ``mmquant`` folder and
    ``setup.py``.

    Args:
        name (str): ``'configs'``, ``'tools'`` or ``'model-index.yml'``.

    Returns:
        str: The absolute path.

    Raises:
        FileNotFoundError: If neither place has it.
    """
    package_dir = osp.dirname(osp.abspath(__file__))
    installed = osp.join(package_dir, MIM_DIR, name)
    if osp.exists(installed):
        return installed
    checkout = osp.dirname(package_dir)
    if osp.isfile(osp.join(checkout, 'setup.py')) and osp.exists(
            osp.join(checkout, name)):
        return osp.join(checkout, name)
    raise FileNotFoundError(
        f'mmquant ships no {name!r}: {installed} is missing and '
        f'{package_dir} is not in a source checkout; reinstall mmquant '
        '(pip install . or bash tools/install.sh)')


def register_config_package() -> None:
    """Let configs reference mmquant's configs as ``'mmquant::path'``.

    mmengine resolves ``_base_ = 'pkg::path'`` only for the packages in
    its ``mmengine.config.utils.MODULE2PACKAGE`` table, and then reads
    ``<installed pkg>/.mim/configs/path``. This adds mmquant to that table
    (idempotent); mmquant's tools call it before they load a config, and
    Python code calls it once before :meth:`mmengine.config.Config.fromfile`::

        from mmquant.mim import register_config_package
        register_config_package()
        cfg = Config.fromfile('my_config.py')  # may use 'mmquant::...'

    mmengine gives every dict with a ``type`` that comes from a
    ``'pkg::'`` base the scope ``pkg`` (``_scope_='mmquant'``). That is
    right for mmquant's quantizer bases
    (``'mmquant::_base_/quantizers/bitsplit_w4a8.py'`` next to
    ``'mmpretrain::...'`` or ``'mmdet::...'``), but mmquant's model
    configs are mmpretrain/mmdet configs: inherit those by their path
    (``shipped_path('configs')``), or mmengine looks their models and
    datasets up in mmquant's registries.

    mmengine 0.10.7 finds the package next to its ``.dist-info`` (or
    ``.egg-link``): that holds for a wheel or sdist install and for a
    ``setup.py develop`` editable install (``tools/install.sh`` with pip
    23), not for a PEP 660 editable install (``pip install -e`` with
    ``--use-pep517`` or a pip that has no ``setup.py develop`` any more),
    where ``'mmquant::'`` fails with a missing
    ``site-packages/mmquant/.mim/model-index.yml``.

    Raises:
        RuntimeError: If the table maps ``'mmquant'`` to another package.
    """
    from mmengine.config.utils import MODULE2PACKAGE
    registered = MODULE2PACKAGE.setdefault(PACKAGE, PACKAGE)
    if registered != PACKAGE:
        raise RuntimeError(
            f'mmengine.config.utils.MODULE2PACKAGE maps {PACKAGE!r} to '
            f'{registered!r}, not to this package')


def list_tools() -> List[str]:
    """The names of the shipped tools, as :func:`find_tool` takes them.

    Returns:
        list[str]: Paths below ``tools/`` without ``.py``
        (``'ptq'``, ``'deploy/export_onnx'``), sorted.
    """
    root = shipped_path('tools')
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != '__pycache__')
        rel = osp.relpath(dirpath, root)
        for filename in filenames:
            if filename.endswith('.py'):
                name = osp.splitext(filename)[0]
                names.append(name if rel == '.' else
                             '/'.join(rel.split(os.sep) + [name]))
    return sorted(names)


def find_tool(name: str) -> str:
    """The script of the shipped tool ``name``.

    Args:
        name (str): A tool's path below ``tools/`` without ``.py``
            (``'ptq'``, ``'deploy/export_onnx'``), or a tool's file name
            without ``.py`` when it is unique (``'export_onnx'``).

    Returns:
        str: The script's absolute path.

    Raises:
        ValueError: If no tool or more than one tool has that name (the
            message lists the tools).
    """
    tools = list_tools()
    key = name[:-3] if name.endswith('.py') else name
    matches = [t for t in tools if t == key] or [
        t for t in tools if t.rsplit('/', 1)[-1] == key]
    if len(matches) != 1:
        what = 'no tool' if not matches else 'several tools'
        raise ValueError(f'{what} named {name!r}; the tools are: '
                         f'{", ".join(tools)}')
    return osp.join(shipped_path('tools'), *matches[0].split('/')) + '.py'


def run_tool(name: str, args: Optional[List[str]] = None) -> None:
    """Run a shipped tool as ``python tools/<name>.py ARGS`` would.

    The tool runs in this process as ``__main__`` with ``sys.argv`` set to
    its path and ``args``; ``'mmquant::'`` config references are
    registered first. ``sys.argv`` is restored afterwards.

    Args:
        name (str): The tool, as :func:`find_tool` takes it.
        args (list[str], optional): Its command line arguments.

    Raises:
        ValueError: If there is no such tool.
        SystemExit: With the tool's exit status, when the tool exits.
    """
    script = find_tool(name)
    register_config_package()
    saved = sys.argv
    sys.argv = [script] + list(args or [])
    try:
        runpy.run_path(script, run_name='__main__')
    finally:
        sys.argv = saved
