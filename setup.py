"""Install mmquant: BitSplit post-training quantization for OpenMMLab.

Like OpenMMLab's packages, mmquant ships its ``configs/``, ``tools/`` and
``model-index.yml`` inside the package, in ``mmquant/.mim/``, so that
``'mmquant::path'`` config references and ``python -m mmquant TOOL`` work
on an installed package (:mod:`mmquant.mim`): a wheel gets copies (made in
the build folder, the checkout is not touched; an sdist carries the
originals), an editable install gets symbolic links in the checkout's
``mmquant/.mim/`` (ignored by git), so it sees the configs and tools as
they are edited.
"""
import os
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

ROOT = osp.dirname(osp.abspath(__file__))
#: What ships in ``mmquant/.mim/`` (paths relative to this folder).
MIM_FILES = ('configs', 'tools', 'model-index.yml')


def read_version() -> str:
    """Read ``__version__`` from ``mmquant/version.py`` without import."""
    scope: dict = {}
    with open(osp.join(ROOT, 'mmquant', 'version.py')) as f:
        exec(compile(f.read(), 'version.py', 'exec'), scope)
    return scope['__version__']


def read_requirements(name: str) -> list:
    """Read one requirements file, skipping comments and includes."""
    path = osp.join(ROOT, 'requirements', name)
    with open(path) as f:
        lines = (line.split('#')[0].strip() for line in f)
        return [line for line in lines if line and not line.startswith('-')]


def _replace(dst: str) -> None:
    """Remove ``dst`` (a file, a link or a folder) if it is there."""
    if osp.islink(dst) or osp.isfile(dst):
        os.remove(dst)
    elif osp.isdir(dst):
        shutil.rmtree(dst)


def copy_mim_files(package_dir: str) -> None:
    """Copy ``MIM_FILES`` into ``<package_dir>/.mim/`` (without caches).

    Args:
        package_dir (str): The ``mmquant`` folder of a build.
    """
    mim_path = osp.join(package_dir, '.mim')
    os.makedirs(mim_path, exist_ok=True)
    for name in MIM_FILES:
        src, dst = osp.join(ROOT, name), osp.join(mim_path, name)
        _replace(dst)
        if osp.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(
                '__pycache__', '*.py[cod]'))
        else:
            shutil.copyfile(src, dst)


def link_mim_files() -> None:
    """Link ``mmquant/.mim/<name>`` to the checkout's ``MIM_FILES``."""
    mim_path = osp.join(ROOT, 'mmquant', '.mim')
    os.makedirs(mim_path, exist_ok=True)
    for name in MIM_FILES:
        dst = osp.join(mim_path, name)
        _replace(dst)
        os.symlink(osp.relpath(osp.join(ROOT, name), mim_path), dst)


class BuildPy(build_py):
    """``build_py`` that adds the mim files to the built package."""

    def run(self) -> None:
        super().run()
        if not getattr(self, 'editable_mode', False):
            copy_mim_files(osp.join(self.build_lib, 'mmquant'))


class Develop(develop):
    """``develop`` (``pip install -e .``) that links the mim files."""

    def run(self) -> None:
        link_mim_files()
        super().run()


CMDCLASS = dict(build_py=BuildPy, develop=Develop)
try:  # setuptools >= 64: PEP 660 editable installs
    from setuptools.command.editable_wheel import editable_wheel

    class EditableWheel(editable_wheel):
        """``editable_wheel`` (PEP 660 ``pip install -e .``) that links
        the mim files."""

        def run(self) -> None:
            link_mim_files()
            super().run()

    CMDCLASS['editable_wheel'] = EditableWheel
except ImportError:
    pass


setup(
    name='mmquant',
    version=read_version(),
    description='BitSplit post-training quantization for OpenMMLab models',
    long_description=open('README.md').read() if osp.exists(
        'README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    python_requires='>=3.9,<3.13',
    install_requires=['torch>=2.6', 'mmengine>=0.10,<1.0'],
    extras_require=dict(
        openmmlab=read_requirements('runtime.txt'),
        tests=read_requirements('tests.txt')),
    cmdclass=CMDCLASS,
    entry_points={'console_scripts': ['mmquant=mmquant.__main__:main']},
    license='Apache License 2.0',
    zip_safe=False,
)
