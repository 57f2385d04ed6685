"""harness.core.tars: the one tar reader (webdataset's member iterator, grouped into samples).

Truncated shards (inside a member, on a member boundary, inside a header), duplicate and meta
members, members whose bytes are not kept, gzip-compressed shards and data that is no tar at all.
The end-of-archive check is compared, cut by cut, with tarfile's own offset.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from harness.core.tars import TruncatedTar, UnreadableTar, is_meta, split_key, tar_samples


def _tar(members: list[tuple[str, bytes]], *, dirs: tuple[str, ...] = (), fmt=tarfile.USTAR_FORMAT) -> bytes:
    """An uncompressed tar of (name, bytes) members, in order, after the given directory entries."""
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt) as tf:
        for d in dirs:
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            tf.addfile(ti)
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return b.getvalue()


def _read(data: bytes, **kw) -> tuple[list[tuple[str, dict[str, bytes]]], Exception | None]:
    """The samples read from ``data`` and the error that stopped the reading (None: read to the end)."""
    out = []
    try:
        for s in tar_samples(io.BytesIO(data), **kw):
            out.append(s)
    except (TruncatedTar, UnreadableTar) as e:
        return out, e
    return out, None


def _samples(n: int, size: int = 100) -> list[tuple[str, bytes]]:
    return [m for i in range(n) for m in ((f"{i:04d}.jpg", bytes([i]) * size), (f"{i:04d}.txt", f"c{i}".encode()))]


def _member_ends(data: bytes) -> list[int]:
    """The offset just past each member's (padded) data: where a cut leaves whole members only."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE for m in tf.getmembers()]


def test_members_grouped_by_key_as_webdataset_names_them():
    data = _tar(
        [
            ("a/0001.JPG", b"img1"),
            ("a/0001.seg.PNG", b"seg1"),
            ("a/0001.txt", b"t1"),
            ("noext", b"skipped"),
            ("a/0002.jpg", b"img2"),
            ("0003.tar.gz", b"x"),
        ],
        dirs=("a",),
    )
    got, err = _read(data)
    assert err is None
    assert got == [
        ("a/0001", {"jpg": b"img1", "seg.png": b"seg1", "txt": b"t1"}),
        ("a/0002", {"jpg": b"img2"}),
        ("0003", {"tar.gz": b"x"}),
    ]
    assert split_key("d.x/k.A.B") == ("d.x/k", "a.b") and split_key("d.x/k") == (None, None)


def test_duplicate_member_keeps_the_first_and_is_reported():
    seen = []
    data = _tar([("k.jpg", b"first"), ("k.txt", b"t"), ("k.jpg", b"second"), ("j.jpg", b"j")])
    got, err = _read(data, on_duplicate=lambda key, ext: seen.append((key, ext)))
    assert err is None and got == [("k", {"jpg": b"first", "txt": b"t"}), ("j", {"jpg": b"j"})]
    assert seen == [("k", "jpg")]


def test_meta_members_are_skipped_without_splitting_a_sample():
    data = _tar([("__meta__", b"m"), ("k.jpg", b"i"), ("__index__/k.json", b"{}"), ("k.txt", b"t"), ("d/__x__", b"")])
    got, err = _read(data)
    assert err is None and got == [("k", {"jpg": b"i", "txt": b"t"})]
    assert is_meta("__meta__") and is_meta("a/__b__/c.jpg") and not is_meta("__k.jpg") and not is_meta("k__.jpg")


def test_members_not_kept_are_listed_without_their_bytes():
    big = os.urandom(50_000)  # several reads of tarfile's stream buffer
    data = _tar([("k.jpg", big), ("k.cls", b"3"), ("k.json", b"{}"), ("j.jpg", b"j"), ("j.cls", b"1"), ("j.x", b"")])
    got, err = _read(data, keep=lambda ext: ext == "cls")
    assert err is None
    assert got == [("k", {"jpg": b"", "cls": b"3", "json": b""}), ("j", {"jpg": b"", "cls": b"1", "x": b""})]
    assert _read(data)[0][0][1]["jpg"] == big


def test_truncated_inside_a_member_keeps_the_samples_before_it():
    data = _tar(_samples(4, size=3000))
    ends = _member_ends(data)
    cut = ends[3] + 512 + 1000  # inside 0002.jpg's bytes
    got, err = _read(data[:cut])
    assert isinstance(err, TruncatedTar) and "unexpected end of data" in err.detail and " @ " not in err.detail
    assert [k for k, _ in got] == ["0000", "0001"]


def test_truncated_on_a_member_boundary_has_no_end_of_archive_marker():
    data = _tar(_samples(3))
    ends = _member_ends(data)
    got, err = _read(data[: ends[-1]])  # every member whole, no zero block after them
    assert isinstance(err, TruncatedTar) and "no end-of-archive marker" in err.detail
    assert [k for k, _ in got] == ["0000", "0001"]  # the last sample may have had more members: dropped
    got, err = _read(data[: ends[3]])  # cut after 0001's members: 0001 is dropped too
    assert isinstance(err, TruncatedTar) and [k for k, _ in got] == ["0000"]
    got, err = _read(data[: ends[-1] + 100])  # inside the end-of-archive block
    assert isinstance(err, TruncatedTar) and [k for k, _ in got] == ["0000", "0001"]
    # One whole zero block is an end-of-archive marker (tarfile writes two and pads to a record).
    got, err = _read(data[: ends[-1] + 512])
    assert err is None and [k for k, _ in got] == ["0000", "0001", "0002"]


class _Counting:
    """The byte counter of the tarfile loop this module replaced: bytes returned, and a short read seen."""

    def __init__(self, f):
        self.f, self.total, self.eof = f, 0, False

    def read(self, n=-1):
        data = self.f.read(n)
        self.total += len(data)
        if not data or (n is not None and 0 <= len(data) < n):
            self.eof = True
        return data


def _tarfile_says(data: bytes) -> tuple[int, bool]:
    """(members read, truncated?) by the replaced check: a break, or data that ends short of
    tarfile's offset plus one block."""
    raw = _Counting(io.BytesIO(data))
    tf = tarfile.open(fileobj=raw, mode="r|*")
    members = 0
    try:
        for ti in tf:
            tf.extractfile(ti).read()
            members += 1
    except (tarfile.TarError, OSError, EOFError):
        return members, True
    return members, raw.eof and raw.total < tf.offset + tarfile.BLOCKSIZE


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_every_cut_is_found_as_tarfiles_offset_finds_it(fmt):
    """Cut at every block boundary and at odd bytes: truncated exactly when tarfile's offset says so."""
    long_name = "x" * 120 + "/0001.jpg"  # a pax or GNU long-name header before the member
    data = _tar([("0000.jpg", b"a" * 700), ("0000.txt", b"t"), (long_name, b"b" * 1500), ("0002.cls", b"")], fmt=fmt)
    cuts = sorted({*range(512, len(data) + 1, 512), *range(700, len(data), 997), len(data)})
    first_header = 1024 if fmt != tarfile.USTAR_FORMAT else 512
    for cut in cuts:
        if cut < first_header:
            continue  # tarfile cannot open it: an unreadable shard (below)
        _, truncated = _tarfile_says(data[:cut])
        got, err = _read(data[:cut])
        assert isinstance(err, TruncatedTar) == truncated, (cut, err)
        assert err is None or isinstance(err, TruncatedTar)
        if not truncated:
            assert [k for k, _ in got] == ["0000", "x" * 120 + "/0001", "0002"], cut


def test_gzip_compressed_shard():
    data = _tar(_samples(5, size=5000))
    gz = gzip.compress(data, mtime=0)
    got, err = _read(gz)
    assert err is None and got == _read(data)[0] and len(got) == 5
    got, err = _read(gz[: len(gz) // 2])  # cut inside the compressed data
    assert isinstance(err, TruncatedTar) and len(got) < 5
    # A whole gzip stream of a tar cut on a member boundary: the decompressed data has no end marker.
    got, err = _read(gzip.compress(data[: _member_ends(data)[-1]], mtime=0))
    assert isinstance(err, TruncatedTar) and "no end-of-archive marker" in err.detail and len(got) == 4
    for cut in range(64, len(gz), 97):  # any cut: the samples read are the first ones
        got, err = _read(gz[:cut])
        full = _read(gz)[0]
        assert got == full[: len(got)] and (err is not None or got == full), cut


def test_data_that_is_no_tar_is_unreadable():
    for junk in (b"", b"not a tar " * 100, _tar(_samples(1))[:300], gzip.compress(b"not a tar " * 100)):
        got, err = _read(junk)
        assert isinstance(err, UnreadableTar) and got == [] and err.detail.startswith("not a tar archive"), junk[:20]
    got, err = _read(_tar([]))  # an empty archive is a tar with no samples
    assert err is None and got == []


def test_both_readers_use_it(tmp_path):
    """curation.sources counts a duplicate member and skips a meta member; downstream.loaders names a cut shard."""
    from curation.sources import open_source
    from downstream.loaders import DataFormatError, WdsStorage
    from downstream.sets import DownstreamSet

    (tmp_path / "src").mkdir()
    members = [("__meta__", b"m"), ("k0.jpg", b"i0"), ("k0.txt", b"a"), ("k0.txt", b"b"), ("k0.json", b"{}")]
    (tmp_path / "src" / "00000.tar").write_bytes(
        _tar([*members, ("k1.jpg", b"i1"), ("k1.txt", b"c"), ("k1.json", b"{}")])
    )
    o = open_source(str(tmp_path / "src"))
    assert [(s["key"], s["txt"]) for s in o.iter_samples()] == [("k0", "a"), ("k1", "c")]
    assert o.skipped == {"duplicate_member": 1} and o.num_samples == 2

    (tmp_path / "wds" / "train").mkdir(parents=True)
    data = _tar([("a.jpg", b"ia"), ("a.cls", b"0"), ("b.PNG", b"ib"), ("b.cls", b"1")])
    shard = tmp_path / "wds" / "train" / "000000.tar"
    shard.write_bytes(data)
    entry = DownstreamSet.from_config("t", {"format": "wds", "path": str(tmp_path / "wds"), "class_names": ["x", "y"]})
    st = WdsStorage(entry, tmp_path / "wds")
    assert st.labels("train").tolist() == [0, 1] and st.payloads("train", [0, 1]) == [b"ia", b"ib"]
    shard.write_bytes(data[: _member_ends(data)[-1]])
    with pytest.raises(DataFormatError, match=r"000000.tar is truncated \(no end-of-archive marker"):
        WdsStorage(entry, tmp_path / "wds").labels("train")
