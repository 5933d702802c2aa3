"""The committed benchmark files are what the generator writes.

``configs/bitsplit/results/fmnist_offline.json`` holds the rows of the
offline benchmark; the Results section of ``configs/bitsplit/README.md``
and ``configs/bitsplit/metafile.yml`` must be regenerated from it byte for
byte (``tools/benchmark.py --results``), so no number is edited by hand.
"""
import os.path as osp

from mmquant.apis import benchmark as bm

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BITSPLIT = osp.join(ROOT, 'configs', 'bitsplit')
RESULTS = osp.join(BITSPLIT, 'results', 'fmnist_offline.json')


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_readme_section_is_generated(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the rows' paths are relative to the root
    rows, info = bm.load_results(RESULTS)
    readme = osp.join(BITSPLIT, 'README.md')
    copy = tmp_path / 'README.md'
    copy.write_text(_read(readme))
    bm.update_readme(str(copy), bm.render_header(info, '', rows)
                     + bm.render_markdown(rows, BITSPLIT))
    assert copy.read_text() == _read(readme)


def test_metafile_is_generated():
    rows, _ = bm.load_results(RESULTS)
    assert bm.render_metafile(rows, 'configs/bitsplit/README.md') == \
        _read(osp.join(BITSPLIT, 'metafile.yml'))
