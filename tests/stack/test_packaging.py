"""What ``pip install .`` ships, and that the installed package works alone.

The wheel is built from a copy of this checkout and installed into a fresh
virtual environment outside it that reuses the tested stack of this
interpreter (a ``.pth`` file naming its site-packages; ``--no-deps
--no-index``, so nothing is downloaded). Its tools then run from another
directory with nothing of the checkout on ``sys.path``.
"""
import ast
import os
import os.path as osp
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from typing import Dict, List

import pytest
from setuptools import find_packages

from mmquant import mim
from mmquant.__main__ import main

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
EXAMPLE = osp.join(ROOT, 'configs', 'examples', 'fmnist_resnet_tiny.py')
CHECKPOINT = osp.join(ROOT, 'checkpoints', 'fmnist_resnet_tiny.pth')
DATA = osp.join(ROOT, 'data', 'fashion-mnist')
QUANTIZER_BASE = '_base_/quantizers/bitsplit_w4a8.py'
#: Not needed to build the wheel (large, or made by builds and runs).
NOT_COPIED = {'.git', '.venv', 'build', 'dist', 'data', 'work_dirs',
              'checkpoints', '.pytest_cache', '__pycache__', '.mim'}


def _package_folders() -> List[str]:
    """Every folder of ``mmquant/`` with Python files, dotted."""
    folders = []
    for dirpath, dirnames, files in os.walk(osp.join(ROOT, 'mmquant')):
        dirnames[:] = [d for d in dirnames if d not in NOT_COPIED]
        if any(f.endswith('.py') for f in files):
            folders.append(osp.relpath(dirpath, ROOT).replace(os.sep, '.'))
    return folders


def _files(top: str, suffixes: tuple) -> List[str]:
    """The files below ``ROOT/top`` ending in ``suffixes``, '/'-joined."""
    found = []
    for dirpath, dirnames, files in os.walk(osp.join(ROOT, top)):
        dirnames[:] = [d for d in dirnames if d != '__pycache__']
        found += [
            osp.relpath(osp.join(dirpath, f), ROOT).replace(os.sep, '/')
            for f in files if f.endswith(suffixes)
        ]
    return found


def _clean_env() -> Dict[str, str]:
    """This environment without anything that puts the checkout on
    ``sys.path``."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['OMP_NUM_THREADS'] = '1'
    return env


def _run(args: List[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_clean_env(),
                          capture_output=True, text=True, timeout=300)


def test_every_package_folder_is_shipped():
    shipped = set(find_packages(ROOT, exclude=('tests', 'tests.*',
                                               'configs', 'tools')))
    folders = set(_package_folders())
    assert 'mmquant.apis' in folders
    assert folders <= shipped, sorted(folders - shipped)


def test_no_tool_edits_sys_path():
    """Tools import the installed package (an editable install in a
    clone), so they run the same from the checkout and from ``.mim``."""
    editing = []
    for path in _files('tools', ('.py', )) + _files('tests', ('.py', )):
        with open(osp.join(ROOT, path)) as f:
            tree = ast.parse(f.read())
        if any(isinstance(node, ast.Attribute) and node.attr == 'path'
               and isinstance(node.value, ast.Name) and node.value.id == 'sys'
               for node in ast.walk(tree)):
            editing.append(path)
    assert editing == []


# ------------------------------------------- the tool entry point, in place


def test_shipped_path_installed_checkout_or_error(tmp_path, monkeypatch):
    package = tmp_path / 'mmquant'
    package.mkdir()
    monkeypatch.setattr(mim, '__file__', str(package / 'mim.py'))
    with pytest.raises(FileNotFoundError, match=r"ships no 'tools'.*"
                       r'not in a source checkout'):
        mim.shipped_path('tools')
    (tmp_path / 'tools').mkdir()
    with pytest.raises(FileNotFoundError, match="ships no 'tools'"):
        mim.shipped_path('tools')  # a 'tools' folder, but no checkout
    (tmp_path / 'setup.py').write_text('')
    assert mim.shipped_path('tools') == str(tmp_path / 'tools')
    (package / '.mim' / 'tools').mkdir(parents=True)
    assert mim.shipped_path('tools') == str(package / '.mim' / 'tools')


def test_find_tool_by_path_or_unique_name():
    tools = mim.list_tools()
    assert {'ptq', 'test', 'deploy/export_onnx'} <= set(tools)
    # the checkout's tools, directly or through an editable install's
    # mmquant/.mim links
    real = osp.realpath
    tools_dir = osp.join(real(ROOT), 'tools')
    assert real(mim.find_tool('ptq')) == osp.join(tools_dir, 'ptq.py')
    export = osp.join(tools_dir, 'deploy', 'export_onnx.py')
    assert real(mim.find_tool('deploy/export_onnx')) == export
    assert real(mim.find_tool('export_onnx')) == export
    assert real(mim.find_tool('export_onnx.py')) == export


def test_unknown_tool_is_refused_with_the_list(capsys):
    with pytest.raises(ValueError, match=r"no tool named 'nosuch'.*ptq"):
        mim.find_tool('nosuch')
    assert main(['nosuch', '--help']) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m mmquant: error: no tool named 'nosuch'")
    assert 'deploy/export_onnx' in err


def test_ambiguous_tool_name_is_refused(tmp_path, monkeypatch):
    for sub in ('a', 'b'):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / 'same.py').write_text('')
    monkeypatch.setattr(mim, 'shipped_path', lambda name: str(tmp_path))
    with pytest.raises(ValueError, match="several tools named 'same'"):
        mim.find_tool('same')
    assert mim.find_tool('a/same') == str(tmp_path / 'a' / 'same.py')


def test_main_without_a_tool(capsys):
    assert main([]) == 2
    assert 'usage: python -m mmquant TOOL' in capsys.readouterr().err
    assert main(['--help']) == 0
    assert 'usage: python -m mmquant TOOL' in capsys.readouterr().out
    assert main(['--list']) == 0
    assert capsys.readouterr().out.splitlines() == mim.list_tools()


def test_run_tool_passes_arguments_and_exit_status(capsys):
    argv = list(sys.argv)
    with pytest.raises(SystemExit) as exc:
        main(['inspect_checkpoint', '--help'])
    assert exc.value.code == 0
    assert 'usage: inspect_checkpoint.py' in capsys.readouterr().out
    assert sys.argv == argv
    with pytest.raises(SystemExit) as exc:
        mim.run_tool('inspect_checkpoint', ['--no-such-option'])
    assert exc.value.code == 2
    assert sys.argv == argv


def test_register_config_package(monkeypatch):
    from mmengine.config.utils import MODULE2PACKAGE
    monkeypatch.delitem(MODULE2PACKAGE, 'mmquant', raising=False)
    mim.register_config_package()
    mim.register_config_package()
    assert MODULE2PACKAGE['mmquant'] == 'mmquant'
    monkeypatch.setitem(MODULE2PACKAGE, 'mmquant', 'other')
    with pytest.raises(RuntimeError, match="maps 'mmquant' to 'other'"):
        mim.register_config_package()


def _copy_checkout(dst) -> None:
    shutil.copytree(ROOT, dst, ignore=lambda d, names: [
        n for n in names if n in NOT_COPIED or n.endswith('.egg-info')])


def _site_packages(python: str) -> str:
    out = _run([python, '-c', 'import sysconfig; '
                'print(sysconfig.get_paths()["purelib"])'], ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def _fresh_env(env_dir) -> str:
    """A virtual environment that sees this interpreter's site-packages
    but not its ``.pth`` files (so no mmquant until one is installed into
    it); returns its python."""
    venv.EnvBuilder(symlinks=os.name != 'nt').create(env_dir)
    python = str(env_dir / 'bin' / 'python')
    stack = {sysconfig.get_paths()[k] for k in ('purelib', 'platlib')}
    with open(osp.join(_site_packages(python), 'tested_stack.pth'),
              'w') as f:
        f.write('\n'.join(sorted(stack)) + '\n')
    return python


PIP = [sys.executable, '-m', 'pip', '--disable-pip-version-check']


def test_editable_install_links_the_checkout(tmp_path):
    src = tmp_path / 'src'
    _copy_checkout(src)
    python = _fresh_env(tmp_path / 'venv')
    out = _run(PIP + ['--python', python, 'install', '--no-deps',
                      '--no-build-isolation', '--no-index', '-e', str(src)],
               str(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in ('configs', 'tools', 'model-index.yml'):
        link = src / 'mmquant' / '.mim' / name
        assert link.is_symlink(), name
        assert osp.realpath(link) == osp.realpath(src / name)
    (src / 'tools' / 'hello.py').write_text("print('edited')\n")
    out = _run([python, '-m', 'mmquant', 'hello'], str(tmp_path))
    assert (out.returncode, out.stdout) == (0, 'edited\n'), out.stderr


# ------------------------------------------- the wheel, installed elsewhere


@pytest.fixture(scope='module')
def installed(tmp_path_factory) -> Dict[str, str]:
    """The wheel built from a copy of this checkout, installed into a
    fresh virtual environment outside it."""
    tmp = tmp_path_factory.mktemp('packaging')
    src, dist = tmp / 'src', tmp / 'dist'
    _copy_checkout(src)
    out = _run(PIP + ['wheel', '--no-deps', '--no-build-isolation',
                      '--no-index', '-w', str(dist), str(src)], str(tmp))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert not (src / 'mmquant' / '.mim').exists(), 'the build wrote there'
    wheel, = [str(p) for p in dist.glob('mmquant-*.whl')]
    python = _fresh_env(tmp / 'venv')
    out = _run(PIP + ['--python', python, 'install', '--no-deps',
                      '--no-index', wheel], str(tmp))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    site = _site_packages(python)
    return dict(wheel=wheel, python=python, site=site,
                bin=osp.dirname(python))


def test_wheel_ships_every_module_config_and_tool(installed):
    with zipfile.ZipFile(installed['wheel']) as whl:
        names = set(whl.namelist())
    modules = _files('mmquant', ('.py', ))
    assert 'mmquant/apis/__init__.py' in modules
    assert sorted(set(modules) - names) == []
    shipped = {'mmquant/.mim/' + f
               for f in _files('configs', ('.py', '.yml', '.json', '.md'))
               + _files('tools', ('.py', '.sh')) + ['model-index.yml']}
    assert 'mmquant/.mim/configs/examples/fmnist_resnet_tiny.py' in shipped
    assert sorted(shipped - names) == []
    assert not [n for n in names if '__pycache__' in n or 'tests/' in n]


def test_sdist_builds_the_same_wheel(installed, tmp_path):
    src = tmp_path / 'src'
    _copy_checkout(src)
    out = _run([sys.executable, 'setup.py', '-q', 'sdist', '-d',
                str(tmp_path / 'sdist')], str(src))
    assert out.returncode == 0, out.stderr[-3000:]
    sdist, = (tmp_path / 'sdist').glob('mmquant-*.tar.gz')
    out = _run(PIP + ['wheel', '--no-deps', '--no-build-isolation',
                      '--no-index', '-w', str(tmp_path / 'dist'),
                      str(sdist)], str(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    wheel, = (tmp_path / 'dist').glob('mmquant-*.whl')
    with zipfile.ZipFile(wheel) as a, zipfile.ZipFile(installed['wheel']) \
            as b:
        assert sorted(a.namelist()) == sorted(b.namelist())


def test_installed_package_is_imported_from_the_environment(
        installed, tmp_path):
    out = _run([installed['python'], '-c',
                'import mmquant; print(mmquant.__file__)'], str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == osp.join(installed['site'], 'mmquant',
                                          '__init__.py')
    out = _run([osp.join(installed['bin'], 'mmquant'), '--list'],
               str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert {'ptq', 'test', 'deploy/export_onnx'} <= set(
        out.stdout.split())


def test_entry_point_quantizes_the_example_from_elsewhere(
        installed, tmp_path):
    if not osp.isfile(osp.join(DATA, 't10k-images-idx3-ubyte')):
        pytest.skip(f'no Fashion-MNIST in {DATA} (bash tools/install.sh)')
    work_dir = tmp_path / 'work'
    out = _run([
        installed['python'], '-m', 'mmquant', 'ptq', EXAMPLE, CHECKPOINT,
        '--no-eval', '--calib-samples', '32', '--work-dir', str(work_dir),
        '--cfg-options', f'calib_dataloader.dataset.data_root={DATA}'
    ], str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    int_file = work_dir / 'latest' / 'fmnist_resnet_tiny_w4a8_int.pth'
    assert int_file.is_file()
    assert f'mmquant: wrote {int_file.resolve()}' in out.stdout + out.stderr


def test_mmquant_config_reference_resolves_from_the_package(
        installed, tmp_path):
    (tmp_path / 'child.py').write_text(
        f"_base_ = ['mmquant::{QUANTIZER_BASE}']\n"
        'quantizer = dict(w_bits=3)\n')
    code = '\n'.join([
        'from mmengine.config import Config',
        'try:',
        "    Config.fromfile('child.py')",
        'except AssertionError as err:',
        "    print('unregistered:', err)",
        'from mmquant.apis.ptq import load_config',  # as the tools do
        "cfg = load_config('child.py')",
        'print(sorted(cfg.quantizer.items()))',
        "print([line for line in cfg.text.splitlines() if 'mmquant' in line"
        " and line.endswith('.py')][0])",
    ])
    out = _run([installed['python'], '-c', code], str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == ('unregistered: mmengine does not support to load '
                        'mmquant config.')
    assert lines[1] == str(sorted(dict(
        _scope_='mmquant', type='mmquant.BitSplitQuantizer', w_bits=3,
        a_bits=8, error_compensation=True, rows_per_layer=16384,
        seed=0).items()))
    assert lines[2] == osp.join(installed['site'], 'mmquant', '.mim',
                                'configs', *QUANTIZER_BASE.split('/'))
