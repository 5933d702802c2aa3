"""Tests for mmquant.checkpoint.container."""
import errno
import hashlib
import json
import os
import os.path as osp
import pickle
import zipfile

import pytest
import torch

from mmquant import fileio
from mmquant.checkpoint import container, safe_load
from mmquant.checkpoint.container import (CheckpointError,
                                          CheckpointNotFoundError,
                                          UnsafeCheckpointError,
                                          load_container, save_container,
                                          tensor_sha256, tensors_digest)
from mmquant.checkpoint.packing import pack_int


class _Custom:
    """A class weights-only loading must refuse."""


def _tensors():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        'backbone.conv1.weight.packed': pack_int(
            torch.tensor([1, -1, 0, 3, -3, 2, -2, 1, 0]), 3),
        'backbone.conv1.weight.scale': torch.tensor([0.5, 0.25]),
        'head.fc.bias': base[:, 1],  # a strided view
        'bn.num_batches_tracked': torch.tensor(7),
        'half': torch.linspace(-1, 1, 5).to(torch.bfloat16),
        'mask': torch.tensor([True, False]),
        'empty': torch.empty(0, 3),
        'param': torch.nn.Parameter(torch.ones(2)),
    }


META = {
    'mmquant_version': '0.1.0',
    'layers': {'backbone.conv1': {'bits': 3, 'shape': [9]}},
    'float_sha256': 'ab' * 32,
    'ratio': 0.5,
    'flags': [True, None, 'x'],
    'cfg_text': "model = dict(type='ResNet')\n# é",
}


def _files(d):
    return sorted(os.listdir(d))


def test_round_trip(tmp_path):
    path = tmp_path / 'int.pth'
    tensors = _tensors()
    save_container(path, tensors, META)
    assert _files(tmp_path) == ['int.pth']
    loaded, meta = load_container(path)
    assert meta == META
    assert list(loaded) == list(tensors)
    for name, t in tensors.items():
        assert type(loaded[name]) is torch.Tensor
        assert loaded[name].dtype == t.dtype
        assert torch.equal(loaded[name], t.detach()), name
        assert loaded[name].is_contiguous()
    # The view was cloned: its storage holds only its own 4 elements.
    assert loaded['head.fc.bias'].untyped_storage().nbytes() == 16
    # Plain torch.load with weights_only and no allowlist works.
    raw = torch.load(path, weights_only=True)
    assert raw['format'] == 'mmquant-int' and raw['format_version'] == 1
    assert json.loads(raw['meta']) == dict(
        META, tensors_sha256=tensors_digest(raw['checksums']))
    assert raw['meta_sha256'] == hashlib.sha256(
        raw['meta'].encode('utf-8')).hexdigest()
    assert raw['checksums']['mask'] == tensor_sha256(tensors['mask'])


def test_tuple_meta_reads_back_as_list(tmp_path):
    save_container(tmp_path / 'a.pth', {}, {'shape': (1, 2)})
    assert load_container(tmp_path / 'a.pth') == ({}, {'shape': [1, 2]})


def test_tensor_sha256_definition():
    t = torch.tensor([[1, 2, 3]], dtype=torch.int16)
    expected = hashlib.sha256(b'int16;[1, 3]\n' + bytes(
        t.numpy().tobytes())).hexdigest()
    assert tensor_sha256(t) == expected
    # dtype and shape are covered, not just the bytes.
    assert tensor_sha256(t.reshape(3, 1)) != expected
    assert tensor_sha256(t.view(torch.uint8)) != tensor_sha256(
        t.view(torch.float16))
    assert tensor_sha256(t.t()) == tensor_sha256(t.t().contiguous())
    assert tensor_sha256(torch.tensor(1.0)) == hashlib.sha256(
        b'float32;[]\n' + torch.tensor(1.0).numpy().tobytes()).hexdigest()


@pytest.mark.parametrize('meta, match', [
    ({'t': torch.zeros(1)}, r"meta\['t'\].*Tensor"),
    ({'a': {1: 2}}, "key 1 of type int"),
    ({'a': [1, object()]}, r"meta\['a'\]\[1\]"),
    ({'x': float('nan')}, 'NaN'),
])
def test_meta_validation(tmp_path, meta, match):
    with pytest.raises((TypeError, ValueError), match=match):
        save_container(tmp_path / 'a.pth', {}, meta)
    assert _files(tmp_path) == []


def test_tensor_validation(tmp_path):
    with pytest.raises(TypeError, match='names must be str'):
        save_container(tmp_path / 'a.pth', {1: torch.zeros(1)}, {})
    with pytest.raises(TypeError, match='must be a torch.Tensor'):
        save_container(tmp_path / 'a.pth', {'a': [1]}, {})
    with pytest.raises(TypeError, match='dense'):
        save_container(tmp_path / 'a.pth',
                       {'a': torch.zeros(2, 2).to_sparse()}, {})
    with pytest.raises(FileNotFoundError):
        save_container(tmp_path / 'missing' / 'a.pth', {}, {})
    with pytest.raises(IsADirectoryError):
        save_container(tmp_path, {}, {})
    assert _files(tmp_path) == []


def _failing_save(obj, f, *args, **kwargs):
    f.write(b'PK\x03\x04 partial data')
    raise RuntimeError('disk full (simulated)')


def test_atomic_write_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(container.torch, 'save', _failing_save)
    with pytest.raises(RuntimeError, match='simulated'):
        save_container(tmp_path / 'int.pth', _tensors(), META)
    assert _files(tmp_path) == []


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / 'int.pth'
    save_container(path, {'a': torch.ones(3)}, {'v': 1})
    old_bytes = path.read_bytes()
    monkeypatch.setattr(container.torch, 'save', _failing_save)
    with pytest.raises(RuntimeError, match='simulated'):
        save_container(path, _tensors(), META)
    assert _files(tmp_path) == ['int.pth']
    assert path.read_bytes() == old_bytes
    monkeypatch.undo()
    assert load_container(path)[1] == {'v': 1}


def test_atomic_write_failure_at_replace(tmp_path, monkeypatch):
    path = tmp_path / 'int.pth'
    path.write_bytes(b'old')

    def bad_replace(src, dst):
        raise OSError('replace failed (simulated)')

    monkeypatch.setattr(container.os, 'replace', bad_replace)
    with pytest.raises(OSError, match='simulated'):
        save_container(path, {'a': torch.ones(1)}, {})
    assert _files(tmp_path) == ['int.pth']
    assert path.read_bytes() == b'old'


def test_overwrite_and_permissions(tmp_path):
    path = tmp_path / 'int.pth'
    save_container(path, {'a': torch.ones(1)}, {'v': 1})
    save_container(str(path), {'a': torch.zeros(1)}, {'v': 2})
    assert load_container(str(path))[1] == {'v': 2}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_long_file_name(tmp_path):
    path = tmp_path / ('x' * 250 + '.pth')
    save_container(path, {'a': torch.ones(1)}, {})
    assert _files(tmp_path) == [path.name]
    assert torch.equal(load_container(path)[0]['a'], torch.ones(1))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match='not found'):
        load_container(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError):
        load_container(tmp_path / 'nope.pth')
    with pytest.raises(CheckpointError, match='directory'):
        load_container(tmp_path)


@pytest.mark.parametrize('keep', [0, 10, 0.5, -1])
def test_truncated(tmp_path, keep):
    path = tmp_path / 'int.pth'
    save_container(path, _tensors(), META)
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match='truncated or corrupted'):
        load_container(path)


def test_garbage_file(tmp_path):
    path = tmp_path / 'int.pth'
    path.write_bytes(b'not a checkpoint at all' * 10)
    with pytest.raises(CheckpointError, match='truncated or corrupted'):
        load_container(path)


def test_flipped_byte_names_tensor(tmp_path):
    path = tmp_path / 'int.pth'
    target = torch.arange(1000.0, 1064.0)  # distinctive raw bytes
    save_container(path, {'a': torch.ones(4), 'layer.weight': target}, {})
    data = bytearray(path.read_bytes())
    # torch.save stores tensor data uncompressed inside its zip archive
    # (and does not verify CRCs on load), so the raw bytes can be found.
    pos = bytes(data).find(target.numpy().tobytes())
    assert pos > 0
    data[pos + 17] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="tensor 'layer.weight'"):
        load_container(path)
    tensors, _ = load_container(path, verify_checksums=False)
    assert not torch.equal(tensors['layer.weight'], target)


def _write_raw(path, **overrides):
    payload = {
        'format': 'mmquant-int',
        'format_version': 1,
        'meta': '{}',
        'tensors': {'a': torch.ones(2)},
        'checksums': {'a': tensor_sha256(torch.ones(2))},
        'meta_sha256': hashlib.sha256(b'{}').hexdigest(),
    }
    payload.update(overrides)
    torch.save(payload, path)


def test_raw_writer_is_valid(tmp_path):
    _write_raw(tmp_path / 'a.pth')
    # An old file, without the tensor-name digest: loads, with a warning.
    with pytest.warns(UserWarning, match="no 'tensors_sha256'"):
        tensors, meta = load_container(tmp_path / 'a.pth')
    assert meta == {} and torch.equal(tensors['a'], torch.ones(2))


def test_meta_checksum_mismatch(tmp_path):
    _write_raw(tmp_path / 'a.pth', meta='{"x":1}')
    with pytest.raises(CheckpointError, match='meta checksum mismatch'):
        load_container(tmp_path / 'a.pth')


def test_checksum_set_mismatch(tmp_path):
    _write_raw(tmp_path / 'a.pth', checksums={})
    with pytest.raises(CheckpointError, match="no checksum for tensor 'a'"):
        load_container(tmp_path / 'a.pth')


def test_float_checkpoint_is_not_int(tmp_path):
    path = tmp_path / 'float.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': {}}, path)
    with pytest.raises(CheckpointError,
                       match="no 'format' key.*float checkpoint"):
        load_container(path)
    torch.save({'format': 'something-else'}, path)
    with pytest.raises(CheckpointError, match="'something-else'"):
        load_container(path)


@pytest.mark.parametrize('version', [0, 2, '1', None, True])
def test_wrong_version(tmp_path, version):
    _write_raw(tmp_path / 'a.pth', format_version=version)
    with pytest.raises(CheckpointError) as err:
        load_container(tmp_path / 'a.pth')
    msg = str(err.value)
    assert f'format_version {version!r}' in msg
    assert 'supports format_version 1' in msg
    if version == 2:
        assert 'newer mmquant' in msg


def test_missing_keys(tmp_path):
    torch.save({'format': 'mmquant-int', 'format_version': 1},
               tmp_path / 'a.pth')
    with pytest.raises(CheckpointError, match='missing key'):
        load_container(tmp_path / 'a.pth')


def test_pickled_object_refused(tmp_path):
    path = tmp_path / 'evil.pth'
    _write_raw(path, meta_extra=_Custom())
    with pytest.raises(UnsafeCheckpointError) as err:
        load_container(path)
    msg = str(err.value)
    assert 'Python objects' in msg and 'refused for safety' in msg
    assert '_Custom' in msg
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)


def test_plain_pickle_refused(tmp_path):
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        pickle.dump({'format': _Custom()}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match='_Custom'):
        load_container(path)


# ------------------------------------------------ tensor names and digest


def test_tensors_digest_definition():
    checksums = {'b': 'x' * 64, 'a': 'y' * 64, 'é': 'z' * 64}
    text = ('[["a","' + 'y' * 64 + '"],["b","' + 'x' * 64 +
            '"],["\\u00e9","' + 'z' * 64 + '"]]')
    assert tensors_digest(checksums) == hashlib.sha256(
        text.encode('ascii')).hexdigest()
    assert tensors_digest({}) == hashlib.sha256(b'[]').hexdigest()


def test_digest_is_stored_and_reserved(tmp_path):
    path = tmp_path / 'a.pth'
    with pytest.raises(ValueError, match="'tensors_sha256' is reserved"):
        save_container(path, {'a': torch.ones(1)}, {'tensors_sha256': 'x'})
    assert _files(tmp_path) == []
    save_container(path, {'a': torch.ones(1)}, {'v': 1})
    raw = torch.load(path, weights_only=True)
    assert json.loads(raw['meta'])['tensors_sha256'] == tensors_digest(
        {'a': tensor_sha256(torch.ones(1))})
    assert load_container(path)[1] == {'v': 1}


def test_renamed_tensor_detected(tmp_path):
    """A bit flip in a tensor name renames it in tensors and checksums.

    pickle memoizes strings, so the name is stored once for both dicts and
    the tensor checksum (dtype, shape, data) still matches.
    """
    path = tmp_path / 'int.pth'
    save_container(path, {'a.weight': torch.ones(3),
                          'b.weight': torch.arange(3.0)}, {})
    data = bytearray(path.read_bytes())
    pos = bytes(data).find(b'b.weight')
    assert pos > 0 and bytes(data).find(b'b.weight', pos + 1) < 0
    data[pos + 7] ^= 0x01  # 'b.weight' -> 'b.weighu'
    path.write_bytes(bytes(data))
    raw = torch.load(path, weights_only=True)
    assert sorted(raw['tensors']) == sorted(raw['checksums']) == [
        'a.weight', 'b.weighu']
    for verify in (True, False):
        with pytest.raises(CheckpointError,
                           match='tensor names or checksums do not match'):
            load_container(path, verify_checksums=verify)


def test_swapped_tensors_detected(tmp_path):
    path = tmp_path / 'int.pth'
    save_container(path, {'a': torch.ones(3), 'b': torch.zeros(3)}, {})
    raw = torch.load(path, weights_only=True)
    tensors, sums = raw['tensors'], raw['checksums']
    tensors['a'], tensors['b'] = tensors['b'], tensors['a']
    sums['a'], sums['b'] = sums['b'], sums['a']
    torch.save(raw, path)
    with pytest.raises(CheckpointError,
                       match='tensor names or checksums do not match'):
        load_container(path)


# ------------------------------------------------------ untrusted files


def _write_meta(path, meta_text):
    _write_raw(path, meta=meta_text, meta_sha256=hashlib.sha256(
        meta_text.encode('utf-8', 'surrogatepass')).hexdigest())


def test_deeply_nested_meta(tmp_path):
    path = tmp_path / 'deep.pth'
    _write_meta(path, '{"a":' + '[' * 100000 + ']' * 100000 + '}')
    with pytest.raises(CheckpointError, match='more than 64 levels deep'):
        load_container(path)
    # The limit holds on both sides: 64 levels save and load, 65 do not.
    deep = {}
    for _ in range(container.MAX_META_DEPTH - 2):
        deep = {'k': deep}
    save_container(path, {}, {'x': deep})
    assert load_container(path)[1] == {'x': deep}
    with pytest.raises(ValueError, match='nested 65 levels deep'):
        save_container(tmp_path / 'b.pth', {}, {'x': [deep]})
    assert not (tmp_path / 'b.pth').exists()
    _write_meta(path, json.dumps({'x': [deep]}))
    with pytest.raises(CheckpointError, match='more than 64 levels deep'):
        load_container(path)


def test_meta_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(container, 'MAX_META_BYTES', 100, raising=False)
    with pytest.raises(ValueError, match='more than the 100 allowed'):
        save_container(tmp_path / 'a.pth', {}, {'x': 'y' * 100})
    assert _files(tmp_path) == []
    _write_meta(tmp_path / 'a.pth', json.dumps({'x': 'y' * 100}))
    with pytest.raises(CheckpointError, match='bytes, more than the 100'):
        load_container(tmp_path / 'a.pth')


def test_meta_with_lone_surrogate(tmp_path):
    _write_meta(tmp_path / 'a.pth', '{"x":"\ud800"}')
    with pytest.raises(CheckpointError, match='meta is not valid UTF-8'):
        load_container(tmp_path / 'a.pth')


def _deflate(src, dst):
    """Copy a torch.save zip with every member deflate-compressed."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(
            dst, 'w', zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def test_compressed_members(tmp_path, monkeypatch):
    plain, small = tmp_path / 'plain.pth', tmp_path / 'small.pth'
    save_container(plain, {'w': torch.arange(10.0)}, {'v': 1})
    _deflate(plain, small)
    # torch reads deflated members: a modestly compressed file loads.
    tensors, meta = load_container(small)
    assert meta == {'v': 1} and torch.equal(tensors['w'], torch.arange(10.))
    # A member that would inflate far beyond the file is refused before
    # anything is inflated (the floor is lowered from 64 MiB to 1 MiB).
    monkeypatch.setattr(safe_load, '_INFLATE_MIN_CAP', 1 << 20)
    big, bomb = tmp_path / 'big.pth', tmp_path / 'bomb.pth'
    save_container(big, {'w': torch.zeros(1 << 20)}, {})
    _deflate(big, bomb)
    size = bomb.stat().st_size
    assert size < 64 << 10
    with pytest.raises(CheckpointError) as err:
        load_container(bomb)
    msg = str(err.value)
    assert 'compressed) would expand to' in msg
    assert f'allowed for a file of {size} bytes' in msg
    # The same cap for float checkpoints, and for a forged stored size.
    from mmquant.checkpoint import load_float_checkpoint
    with pytest.raises(CheckpointError, match='would expand to'):
        load_float_checkpoint(bomb)


def test_unreadable_zip_directory(tmp_path):
    path = tmp_path / 'a.pth'
    save_container(path, {'w': torch.ones(2)}, {})
    data = path.read_bytes()
    end = data.rfind(b'PK\x05\x06')
    path.write_bytes(data[:end])  # no end of central directory
    with pytest.raises(CheckpointError,
                       match='truncated or corrupted: its zip directory'):
        load_container(path)


# ------------------------------------------------------------ disk full


def test_disk_full_is_a_clear_error(tmp_path, monkeypatch):
    """ENOSPC from the kernel, through torch.save's C++ writer."""
    if not osp.exists('/dev/full'):
        pytest.skip('needs /dev/full')
    open_temp = fileio._open_temp

    def open_full(dirpath, basename):
        fd, tmp = open_temp(dirpath, basename)
        os.close(fd)
        return os.open('/dev/full', os.O_WRONLY), tmp

    monkeypatch.setattr(fileio, '_open_temp', open_full)
    path = tmp_path / 'int.pth'
    with pytest.raises(OSError) as err:
        save_container(path, {'w': torch.zeros(1 << 16)}, {'v': 1})
    assert err.value.errno == errno.ENOSPC
    msg = str(err.value)
    assert (f"cannot write '{path}': the disk holding '{tmp_path}' is "
            'full') in msg
    assert 'inline_container' not in msg
    assert _files(tmp_path) == []
    with pytest.raises(OSError, match='is full') as err:
        fileio.write_text_atomic(str(path), 'x' * (1 << 20))
    assert err.value.errno == errno.ENOSPC
    assert _files(tmp_path) == []

    def torch_like(f):
        # torch.save's C++ writer may turn the OSError into this.
        try:
            f.write(b'x' * (1 << 20))
        except OSError:
            raise RuntimeError('[enforce fail at inline_container.cc:664] '
                               '. unexpected pos 64 vs 0') from None

    with pytest.raises(OSError, match='is full') as err:
        fileio.atomic_write(str(path), torch_like)
    assert err.value.errno == errno.ENOSPC
    assert isinstance(err.value.__cause__, RuntimeError)
    assert _files(tmp_path) == []
