"""Tests for mmquant.checkpoint.float_loading."""
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn

from mmquant.checkpoint.container import (CheckpointError,
                                          CheckpointNotFoundError,
                                          UnsafeCheckpointError,
                                          load_container)
from mmquant.checkpoint.float_loading import (extract_state_dict,
                                              float_safe_globals,
                                              load_float_checkpoint,
                                              load_float_checkpoint_file,
                                              sha256_file)

mmengine = pytest.importorskip('mmengine')


class _Custom:
    """Arbitrary user class: must be refused unless explicitly trusted."""

    def __init__(self):
        self.value = 3


class _GetattrReducer:
    """Pickles as ``getattr(numpy.ndarray, 'tofile')``."""

    def __reduce__(self):
        return getattr, (np.ndarray, 'tofile')


class _Toy(nn.Module):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)


def _runner_like_checkpoint(path, extra_meta=None):
    """Save a checkpoint the way mmengine's Runner.save_checkpoint does."""
    from mmengine.logging import MessageHub
    from mmengine.optim import MultiStepLR, OptimWrapper
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu
    from mmengine.utils import apply_to

    model = _Toy()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1,
                                         momentum=0.9))
    scheduler = MultiStepLR(optim, milestones=[1, 2])
    loss = model.conv.weight.sum() + model.bn.weight.sum()
    optim.update_params(loss)
    scheduler.step()
    hub = MessageHub.get_instance('mmquant_test_float_loading')
    hub.update_scalar('train/loss', np.float64(0.25))
    hub.update_scalar('train/lr', 0.1)
    hub.update_scalar('train/acc', torch.tensor(0.5))
    hub.update_info('iter', 3)
    hub.update_info('dataset_meta', {'classes': ('cat', 'dog')})
    meta = dict(epoch=1, iter=3, seed=np.int64(42), cfg='model = dict()',
                mmengine_version=mmengine.__version__,
                np_value=np.float32(1.5), np_array=np.arange(3),
                dataset_meta={'classes': ('cat', 'dog')})
    meta.update(extra_meta or {})
    checkpoint = {
        'meta': meta,
        'state_dict': weights_to_cpu(model.state_dict()),
        'message_hub': apply_to(hub.state_dict(),
                                lambda x: hasattr(x, 'cpu'),
                                lambda x: x.cpu()),
        'optimizer': optim.state_dict(),
        'param_schedulers': [scheduler.state_dict()],
    }
    save_checkpoint(checkpoint, str(path))
    return model


def test_mmengine_checkpoint_loads(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    model = _runner_like_checkpoint(path)
    # Plain weights-only loading indeed refuses this file.
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    before = list(torch.serialization.get_safe_globals())
    state_dict = load_float_checkpoint(path)
    # mmquant's allowlist is scoped to the load: nothing of it leaks into
    # the process-wide list (torch itself may register its own entries).
    after = torch.serialization.get_safe_globals()
    leaked = [g for g in float_safe_globals()
              if g in after and g not in before]
    assert leaked == []
    ref = model.state_dict()
    assert list(state_dict) == list(ref)
    for k, v in ref.items():
        assert torch.equal(state_dict[k], v), k
    assert state_dict._metadata['bn'] == {'version': 2}
    with pytest.raises(CheckpointError, match='load_float_checkpoint'):
        load_container(path)
    full = load_float_checkpoint_file(path)
    assert full['meta']['seed'] == 42
    assert full['meta']['np_array'].tolist() == [0, 1, 2]
    buf = full['message_hub']['log_scalars']['train/loss']
    assert type(buf).__name__ == 'HistoryBuffer'
    assert buf.current() == 0.25 and buf.mean() == 0.25
    assert full['param_schedulers'][0]['milestones'] == {1: 1, 2: 1}


def test_real_runner_checkpoint_loads(tmp_path):
    """A checkpoint written by a real mmengine Runner (in a subprocess)."""
    script = textwrap.dedent('''
        import numpy as np, torch, torch.nn as nn
        from torch.utils.data import Dataset
        from mmengine.model import BaseModel
        from mmengine.runner import Runner

        class Model(BaseModel):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)
                self.bn = nn.BatchNorm1d(2)
            def forward(self, inputs, labels=None, mode='tensor'):
                out = self.bn(self.fc(inputs))
                if mode == 'loss':
                    return {'loss': ((out - labels) ** 2).mean()}
                return out

        class Data(Dataset):
            metainfo = {'classes': ('a', 'b')}
            def __len__(self):
                return 8
            def __getitem__(self, i):
                return dict(inputs=torch.randn(4), labels=torch.randn(2))

        runner = Runner(
            model=Model(), work_dir='work',
            train_dataloader=dict(
                dataset=Data(), batch_size=4, num_workers=0,
                sampler=dict(type='DefaultSampler', shuffle=True),
                collate_fn=dict(type='default_collate')),
            optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01,
                                              momentum=0.9)),
            param_scheduler=dict(type='MultiStepLR', milestones=[1]),
            train_cfg=dict(by_epoch=True, max_epochs=1),
            default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                               interval=1)),
            randomness=dict(seed=0))
        runner.train()
        torch.save(runner.model.state_dict(), 'ref.pth')
        ''')
    subprocess.run([sys.executable, '-c', script], cwd=tmp_path,
                   check=True, capture_output=True, timeout=120)
    path = tmp_path / 'work' / 'epoch_1.pth'
    state_dict = load_float_checkpoint(path)
    ref = torch.load(tmp_path / 'ref.pth', weights_only=True)
    assert list(state_dict) == list(ref)
    for k, v in ref.items():
        assert torch.equal(state_dict[k], v), k
    full = load_float_checkpoint_file(path)
    assert set(full) >= {'meta', 'state_dict', 'message_hub', 'optimizer',
                         'param_schedulers'}


def test_custom_class_refused(tmp_path):
    path = tmp_path / 'custom.pth'
    _runner_like_checkpoint(path, extra_meta={'obj': _Custom()})
    with pytest.raises(UnsafeCheckpointError) as err:
        load_float_checkpoint(path)
    msg = str(err.value)
    assert f'{__name__}._Custom' in msg
    assert 'refused for safety' in msg
    # How to convert a trusted file safely, and no unsafe advice (torch's
    # own message suggests weights_only=False and add_safe_globals).
    assert 'torch.save({"state_dict": model.state_dict()}' in msg
    for unsafe in ('weights_only=False', 'add_safe_globals',
                   'safe_globals(['):
        assert unsafe not in msg
    # Explicitly trusted by the caller: loads.
    state_dict = load_float_checkpoint(path, extra_safe_globals=[_Custom])
    assert 'conv.weight' in state_dict
    assert _Custom not in torch.serialization.get_safe_globals()


def test_restricted_getattr(tmp_path):
    path = tmp_path / 'getattr.pth'
    torch.save({'state_dict': {'w': torch.ones(1)},
                'x': _GetattrReducer()}, path)
    with pytest.raises(UnsafeCheckpointError, match='getattr') as err:
        load_float_checkpoint(path)
    assert 'weights_only=False' not in str(err.value)
    # torch alone advises `add_safe_globals([getattr])`: never passed on.
    with pytest.raises(UnsafeCheckpointError,
                       match='builtins.getattr') as err:
        load_container(path)
    msg = str(err.value)
    assert 'It references: builtins.getattr, numpy.ndarray.' in msg
    assert 'torch: Unsupported global: GLOBAL getattr was not' in msg
    for unsafe in ('weights_only=False', 'add_safe_globals',
                   'safe_globals(['):
        assert unsafe not in msg


def test_history_buffer_class_state_untouched(tmp_path):
    from mmengine.logging import HistoryBuffer
    path = tmp_path / 'epoch_1.pth'
    _runner_like_checkpoint(path)
    before = dict(HistoryBuffer._statistics_methods)
    load_float_checkpoint_file(path)
    assert HistoryBuffer._statistics_methods == before


def test_user_safe_globals_preserved(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    _runner_like_checkpoint(path)
    saved = list(torch.serialization.get_safe_globals())
    torch.serialization.add_safe_globals([np.ndarray])
    try:
        load_float_checkpoint(path)
        assert np.ndarray in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


def test_state_dict_conventions(tmp_path):
    w = torch.ones(2)
    sd = OrderedDict([('module.a.weight', w), ('module.b', w)])
    sd._metadata = OrderedDict([('', {'version': 1}),
                                ('module', {'version': 1}),
                                ('module.a', {'version': 2})])
    out = extract_state_dict({'state_dict': sd, 'meta': {}})
    assert list(out) == ['a.weight', 'b']
    assert out._metadata == {'': {'version': 1}, 'a': {'version': 2}}
    mixed = extract_state_dict({'module.a': w, 'b': w})
    assert list(mixed) == ['module.a', 'b']
    assert list(extract_state_dict({'model': {'x': w}, 'args': 1})) == ['x']
    with pytest.raises(CheckpointError, match='no state dict'):
        extract_state_dict({'meta': {}, 'epoch': 3})
    with pytest.raises(CheckpointError, match='must be a dict'):
        extract_state_dict([w])
    path = tmp_path / 'plain.pth'
    torch.save({'module.x': w}, path)
    assert list(load_float_checkpoint(path)) == ['x']


def test_errors(tmp_path):
    with pytest.raises(CheckpointNotFoundError):
        load_float_checkpoint(tmp_path / 'missing.pth')
    path = tmp_path / 'trunc.pth'
    _runner_like_checkpoint(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match='truncated or corrupted'):
        load_float_checkpoint(path)


def _safetensors_bytes(tensors):
    """The bytes of a safetensors file holding float32 ``tensors``."""
    header, data, offset = {}, b'', 0
    for name, t in tensors.items():
        raw = t.numpy().tobytes()
        header[name] = {'dtype': 'F32', 'shape': list(t.shape),
                        'data_offsets': [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, 'little') + text + data


class _FakeSafetensorsTorch:
    """Stands in for ``safetensors.torch`` (float32 only)."""

    @staticmethod
    def load(data):
        size = int.from_bytes(data[:8], 'little')
        header = json.loads(data[8:8 + size])
        body = bytearray(data[8 + size:])
        return {
            name: torch.frombuffer(body[a:b], dtype=torch.float32).reshape(
                spec['shape']).clone()
            for name, spec in header.items()
            for a, b in [spec['data_offsets']]
        }


def test_safetensors_checkpoint(tmp_path, monkeypatch):
    w = torch.arange(6.0).reshape(2, 3)
    path = tmp_path / 'model.safetensors'
    path.write_bytes(_safetensors_bytes({'conv.weight': w,
                                         'conv.bias': torch.ones(2)}))
    # Without the package: an error that names the format, not
    # 'truncated or corrupted'.
    monkeypatch.setitem(sys.modules, 'safetensors', None)
    monkeypatch.setitem(sys.modules, 'safetensors.torch', None)
    with pytest.raises(CheckpointError,
                       match='safetensors format.*pip install safetensors'):
        load_float_checkpoint(path)
    # An INT checkpoint is never a safetensors file.
    with pytest.raises(CheckpointError,
                       match='is in the safetensors format, not a '
                       'torch.save file'):
        load_container(path)
    # With the package: it loads, through safetensors' own reader.
    fake = types.ModuleType('safetensors')
    fake.torch = _FakeSafetensorsTorch
    monkeypatch.setitem(sys.modules, 'safetensors', fake)
    monkeypatch.setitem(sys.modules, 'safetensors.torch',
                        _FakeSafetensorsTorch)
    state_dict = load_float_checkpoint(path)
    assert list(state_dict) == ['conv.weight', 'conv.bias']
    assert torch.equal(state_dict['conv.weight'], w)


def test_real_safetensors_package(tmp_path):
    safetensors_torch = pytest.importorskip('safetensors.torch')
    path = tmp_path / 'model.safetensors'
    w = torch.arange(6.0).reshape(2, 3)
    safetensors_torch.save_file({'w': w}, str(path))
    assert torch.equal(load_float_checkpoint(path)['w'], w)


def test_special_files_refused_at_once(tmp_path):
    if not hasattr(os, 'mkfifo'):
        pytest.skip('needs os.mkfifo')
    fifo = tmp_path / 'ckpt.pth'
    os.mkfifo(fifo)
    done = threading.Event()

    def unblock():
        # Should the reader block on the FIFO, open and close its writing
        # end so that the test fails instead of hanging.
        if not done.wait(10):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    threading.Thread(target=unblock, daemon=True).start()
    start = time.monotonic()
    try:
        with pytest.raises(CheckpointError,
                           match=r'is a FIFO \(named pipe\), not a '
                           'regular file'):
            load_float_checkpoint(fifo)
        with pytest.raises(CheckpointError, match='FIFO'):
            load_container(fifo)
    finally:
        done.set()
    assert time.monotonic() - start < 5
    if osp.exists('/dev/null'):
        with pytest.raises(CheckpointError, match='a character device'):
            load_float_checkpoint('/dev/null')
    with pytest.raises(CheckpointError, match='directory'):
        load_float_checkpoint(tmp_path)


def test_allowlist_is_data_only():
    names = set()
    for g in float_safe_globals():
        names.add(g[1] if isinstance(g, tuple) else
                  f'{g.__module__}.{g.__qualname__}')
    assert 'numpy.ndarray' in names
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in names
    for g in float_safe_globals():
        if isinstance(g, tuple) and g[1].endswith('getattr'):
            assert g[0] is not getattr


def test_sha256_file(tmp_path):
    path = tmp_path / 'blob'
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path), chunk_size=7) == hashlib.sha256(
        data).hexdigest()
