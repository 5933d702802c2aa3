"""Install mmquant: BitSplit post-training quantization for OpenMMLab."""
import os.path as osp

from setuptools import find_packages, setup


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
    license='Apache License 2.0',
    zip_safe=False,
)
