"""Install mmquant: BitSplit post-training quantization for OpenMMLab.

Like OpenMMLab's packages, mmquant ships its ``configs/``, ``tools/`` and
``model-index.yml`` inside the package, in ``mmquant/.mim/`` (ignored by
git): :func:`add_mim_extension` copies them there when a wheel or sdist is
built and links them there for an editable install, so that
``'mmquant::path'`` config references and ``python -m mmquant TOOL``
work on an installed package (:mod:`mmquant.mim`).
"""
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

#: What ships in ``mmquant/.mim/`` (paths relative to this folder).
MIM_FILES = ('configs', 'tools', 'model-index.yml')


def read_version() -> str:
    """Read ``__version__`` from ``mmquant/version.py`` without import."""
    scope: dict = {}
    with open(osp.join(osp.dirname(__file__), 'mmquant', 'version.py')) as f:
        exec(compile(f.read(), 'version.py', 'exec'), scope)
    return scope['__version__']


def read_requirements(name: str) -> list:
    """Read one requirements file, skipping comments and includes."""
    path = osp.join(osp.dirname(__file__), 'requirements', name)
    with open(path) as f:
        lines = (line.split('#')[0].strip() for line in f)
        return [line for line in lines if line and not line.startswith('-')]


def add_mim_extension() -> None:
    """Put ``MIM_FILES`` into ``mmquant/.mim/`` for the command being run.

    ``bdist_wheel`` and ``sdist`` get copies; ``develop`` and
    ``editable_wheel`` (``pip install -e .``) get relative symbolic links,
    so an editable install sees the checkout's configs and tools as they
    are edited. Other commands leave ``mmquant/.mim/`` alone. What is
    there before is replaced.
    """
    if 'develop' in sys.argv or 'editable_wheel' in sys.argv:
        mode = 'symlink'
    elif 'bdist_wheel' in sys.argv or 'sdist' in sys.argv:
        mode = 'copy'
    else:
        return
    root = osp.dirname(osp.abspath(__file__))
    mim_path = osp.join(root, 'mmquant', '.mim')
    os.makedirs(mim_path, exist_ok=True)
    for name in MIM_FILES:
        src = osp.join(root, name)
        dst = osp.join(mim_path, name)
        if not osp.exists(src):  # building from an sdist: keep its copy
            continue
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            os.symlink(osp.relpath(src, mim_path), dst)
        elif osp.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(
                '__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


add_mim_extension()
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
    include_package_data=True,
    entry_points={'console_scripts': ['mmquant=mmquant.__main__:main']},
    license='Apache License 2.0',
    zip_safe=False,
)
