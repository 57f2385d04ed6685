"""The one tar reader: a webdataset shard as ``(key, {extension: bytes})`` samples, in order.

Every stage reads shards through :func:`tar_samples` (``curation.sources`` for pre-training
sources, ``downstream.loaders`` for ``wds`` sets) so members are grouped, named and checked one way.
Members come from webdataset's own iterator (:func:`webdataset.tariterators.tar_file_iterator`);
what it does not give is added here:

* **grouping as webdataset names members**: the key is the path up to the first dot of the
  basename and the extension the rest, lower-cased (webdataset's ``base_plus_ext``); a member
  whose name does not split so (no extension) is skipped, as is a ``__meta__`` member (a path
  component that starts and ends with ``__``) and anything that is not a regular file;
* **duplicate members**: a repeated extension within a sample keeps the first and is reported
  to ``on_duplicate`` (webdataset's ``group_by_keys`` raises instead, so it is not used);
* **members whose bytes are not wanted** (``keep``) are listed in their sample as ``b""``
  without holding their bytes;
* **a clear error for a broken shard**: :class:`UnreadableTar` when tarfile cannot open the data
  at all, :class:`TruncatedTar` when it ends early, either inside a member or on a member
  boundary without the end-of-archive zero block (tarfile stops quietly there).

A sample is yielded once a member of another key shows it is whole; on a break, the sample being
read is dropped and every sample before it has been yielded.

How the end-of-archive check stays exact without tarfile's offset: tarfile's stream reader asks
its source for more bytes only while a read it was given is not yet satisfied, and gives up (a
short read) only when the source returns nothing. So the source running dry before the loop ends
means the last header read came up short: the archive ends before a whole end-of-archive block,
which is what ``bytes read < offset + BLOCKSIZE`` said for uncompressed data. The same holds for
the decompressed bytes of a compressed shard, so the check covers ``.tar.gz`` shards too.
"""

from __future__ import annotations

import re
import tarfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import BinaryIO

from webdataset.tariterators import base_plus_ext, tar_file_iterator

# What reading a tar stream raises on bad data (tarfile, the decompressors, the file object).
TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)
_META = re.compile(r"(^|/)__[^/]*__($|/)")  # webdataset's skipped __meta__ members, at any depth

Sample = tuple[str, dict[str, bytes]]


class TarReadError(Exception):
    """A shard that cannot be read to its end; ``detail`` says what went wrong."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class UnreadableTar(TarReadError):
    """The data is not a tar archive (plain or compressed): tarfile cannot open it."""


class TruncatedTar(TarReadError):
    """The archive ends early: inside a member, or without its end-of-archive block."""


def split_key(name: str) -> tuple[str, str] | tuple[None, None]:
    """(key, lower-cased extension) of a member name as webdataset splits it; (None, None) if it does not."""
    key, ext = base_plus_ext(name)
    return (key, ext.lower()) if key is not None else (None, None)


def is_meta(name: str) -> bool:
    """Whether a member is webdataset metadata (``__name__`` as any path component), not sample data."""
    return _META.search(name) is not None


class _Tape:
    """The shard's bytes as tarfile reads them, once to probe that it opens and once to read it.

    While recording it keeps what it returns; after :meth:`rewind` it returns that again and then
    the rest. ``ran_out`` says a read found no more data; ``total`` counts the bytes returned.
    """

    def __init__(self, f: BinaryIO):
        self.f = f
        self.recording = True
        self.recorded: list[bytes] = []
        self.replay = b""
        self.ran_out = False
        self.total = 0

    def rewind(self) -> None:
        self.replay, self.recorded, self.recording = b"".join(self.recorded), [], False
        self.ran_out, self.total = False, 0

    def read(self, n: int | None = -1) -> bytes:
        if self.replay:
            if n is None or n < 0:
                data, self.replay = self.replay + self.f.read(), b""
            else:
                data, self.replay = self.replay[:n], self.replay[n:]
        else:
            data = self.f.read(n)
            if self.recording:
                self.recorded.append(data)
            if not data and n != 0:
                self.ran_out = True
        self.total += len(data)
        return data

    def __repr__(self) -> str:  # webdataset appends " @ <stream>" to an error's message
        return "<tar stream>"


class _Grouper:
    """Members into samples by key: a sample is whole once a member of another key arrives."""

    def __init__(self, on_duplicate: Callable[[str, str], object] | None):
        self.key: str | None = None
        self.group: dict[str, bytes] = {}
        self.on_duplicate = on_duplicate

    def start(self, key: str) -> Sample | None:
        """Begin ``key``'s sample if it is new; returns the sample it completes, if any."""
        if key == self.key:
            return None
        done = (self.key, self.group) if self.key is not None else None
        self.key, self.group = key, {}
        return done

    def add(self, key: str, ext: str, data: bytes) -> Sample | None:
        """Add one member; returns the sample it completes, if any."""
        done = self.start(key)
        if ext in self.group:
            if self.on_duplicate is not None:
                self.on_duplicate(key, ext)
        else:
            self.group[ext] = data
        return done


def _open_probe(tape: _Tape) -> None:
    """Raise UnreadableTar unless tarfile opens the stream (it reads the first header to do so)."""
    try:
        probe = tarfile.open(fileobj=tape, mode="r|*")
    except TAR_ERRORS as e:
        raise UnreadableTar(f"not a tar archive ({e})") from None
    probe.close()  # closes tarfile's own stream object, not the shard's file
    tape.rewind()


def tar_samples(
    fileobj: BinaryIO,
    *,
    keep: Callable[[str], bool] | None = None,
    on_duplicate: Callable[[str, str], object] | None = None,
) -> Iterator[Sample]:
    """(key, {extension: bytes}) per sample of one tar stream (plain or compressed), in order.

    ``keep(ext)`` says whose bytes to read (default: all); a member not kept is listed as ``b""``.
    ``on_duplicate(key, ext)`` is called for each repeated member (the first is kept). Raises
    :class:`UnreadableTar` before any sample, or :class:`TruncatedTar` after the samples read
    before the break (the module docstring says which). The caller opens and closes ``fileobj``.
    """
    tape = _Tape(fileobj)
    _open_probe(tape)
    headers: deque[tuple[str, str]] = deque()  # (key, ext) of members read since the last one yielded

    def select(name: str) -> bool:  # called on each member's header, before its bytes are read
        key, ext = split_key(name)
        if key is None or is_meta(name):
            return False
        headers.append((key, ext))
        return keep is None or keep(ext)

    grouper = _Grouper(on_duplicate)
    try:
        for member in tar_file_iterator(tape, skip_meta=None, select_files=select):
            *skipped, (key, ext) = headers  # the last header is this member's; the others were not kept
            headers.clear()
            for k, x in skipped:
                if (done := grouper.add(k, x, b"")) is not None:
                    yield done
            if (done := grouper.add(key, ext, member["data"])) is not None:
                yield done
    except TAR_ERRORS as e:
        # Members whose headers were read before the break: a new key among them completes a sample.
        *read, last = headers or [(grouper.key, "")]
        for k, x in read:
            if (done := grouper.add(k, x, b"")) is not None:
                yield done
        if last[0] is not None and (done := grouper.start(last[0])) is not None:
            yield done
        detail = str(e).replace(f" @ {tape!r}", "") or type(e).__name__
        raise TruncatedTar(detail) from None
    for k, x in headers:  # members after the last kept one
        if (done := grouper.add(k, x, b"")) is not None:
            yield done
    if tape.ran_out:
        raise TruncatedTar(f"no end-of-archive marker: the data ends after {tape.total} bytes")
    if grouper.key is not None:
        yield grouper.key, grouper.group
