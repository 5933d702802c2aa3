"""What ``pip install .`` ships: every folder of the package is one."""
import os
import os.path as osp

from setuptools import find_packages

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_every_package_folder_is_shipped():
    shipped = set(find_packages(ROOT, exclude=('tests', 'tests.*',
                                               'configs', 'tools')))
    folders = set()
    for dirpath, _, files in os.walk(osp.join(ROOT, 'mmquant')):
        if any(f.endswith('.py') for f in files):
            rel = osp.relpath(dirpath, ROOT)
            folders.add(rel.replace(os.sep, '.'))
    assert 'mmquant.apis' in folders
    assert folders <= shipped, sorted(folders - shipped)
