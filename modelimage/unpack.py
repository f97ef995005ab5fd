"""Layers into a directory, safely: tar streams read front to back as their
bytes arrive, whiteouts applied, nothing written outside the destination.

- :class:`Stream` turns an iterator of byte chunks into the forward-only file
  object :mod:`tarfile` reads headers from; member data is copied straight
  from the chunks into the destination file (no second copy of the blob).
- :func:`decompressed` undoes gzip or zstd with bounded output per step
  (:func:`sniff` tells which from the first bytes, whatever the media type says).
- :class:`LayerWriter` applies one layer. Every member passes
  ``tarfile.data_filter`` (Python 3.11.4+): no absolute paths, nothing that
  resolves outside the destination, no device, fifo or socket entries, no
  links pointing outside, setuid/setgid/sticky bits and group/other write
  bits dropped. Names with a ``..`` component or a leading ``/`` are refused
  outright, and so is writing below a path that is a symlink on disk.
  Regular files are written into a staging directory inside the destination
  and renamed into place by :meth:`LayerWriter.commit` once the caller has
  checked the layer's digest: a file that looks complete is complete.
  Whiteouts (``.wh.NAME``, ``.wh..wh..opq``) remove what lower layers put
  there, as the OCI image spec says.
- :class:`Journal` records what a plain tar stream consumed (header bytes
  kept, file bytes as "so many bytes of this staged file"), so a layer cut
  mid-way can be hashed again from disk and continued with a ``Range``
  request instead of fetched from its first byte.
- :class:`TreeModel` applies the same members to an in-memory tree instead,
  hashing each file: what ``verify`` compares a directory with.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelImageError

OUT_CHUNK = 4 << 20  # decompressed bytes per step: bounded memory for any input
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
RESERVED = ".modelimage-pull"  # the puller's own folder inside the destination

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class UnsafeLayer(ModelImageError):
    """A layer that would write outside the destination, or something unsafe."""


class BadLayer(ModelImageError):
    """A layer that is not what it says it is (not a tar, truncated, ...)."""


# ---------------------------------------------------------------- names


def normalize(name: str, label: str) -> str:
    """A member name as a clean relative POSIX path (``""`` for the root).
    ``./`` prefixes are dropped; absolute names and ``..`` are refused."""
    if name.startswith("/"):
        raise UnsafeLayer(f"{label}: {name!r} is an absolute path; refusing the layer")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"{label}: {name!r} climbs out with '..'; refusing the layer")
    if any("\0" in p for p in parts):
        raise UnsafeLayer(f"{label}: {name!r} has a NUL byte; refusing the layer")
    return "/".join(parts)


def glob_match(rel: str, pattern: str) -> bool:
    """Globs without ``/`` match the file name anywhere, others the whole
    path (as ``build --include`` does)."""
    from fnmatch import fnmatchcase

    if "/" in pattern:
        return fnmatchcase(rel, pattern.lstrip("/"))
    return fnmatchcase(rel.rsplit("/", 1)[-1], pattern)


@dataclass(frozen=True)
class Selection:
    """Which part of a layer's tree lands in the destination: the subtree
    ``prefix`` (root-relative, ``""`` for all), files matching ``include``
    (all when empty) and, for layers that list their files, only ``wanted``."""

    prefix: str = ""
    include: tuple[str, ...] = ()
    wanted: frozenset[str] | None = None  # destination-relative paths

    def relative(self, name: str) -> str | None:
        """``name`` (root-relative) relative to the subtree, or None outside it."""
        if not self.prefix:
            return name
        if name == self.prefix:
            return ""
        if name.startswith(self.prefix + "/"):
            return name[len(self.prefix) + 1 :]
        return None

    def covering(self, name: str) -> str | None:
        """For a whiteout of ``name``: the destination path it removes, ``""``
        when it removes the whole subtree (``name`` is it or an ancestor), None
        when it is elsewhere."""
        if not self.prefix:
            return name
        if not name or name == self.prefix or self.prefix.startswith(name + "/"):
            return ""
        return self.relative(name)

    def wants(self, rel: str) -> bool:
        if self.wanted is not None and rel not in self.wanted:
            return False
        return not self.include or any(glob_match(rel, p) for p in self.include)

    @property
    def all_dirs(self) -> bool:
        """Empty directories too (a whole tree, no filter)."""
        return not self.include and self.wanted is None


# ---------------------------------------------------------------- streams


class Journal:
    """The bytes a :class:`Stream` consumed, in order, from the blob's start:
    ``["meta", bytes]`` for what was read or skipped (tar headers, padding,
    files not wanted) and ``["file", tag, n]`` for ``n`` bytes copied into a
    staged file (``tag`` says which). ``pos`` is where it ends. With the
    staged files, it is enough to hash the blob's prefix again and continue
    from ``pos``. Recording stops (``valid`` False) when more than
    ``max_meta`` bytes would have to be kept, or if bytes ever came out of
    order."""

    def __init__(self, max_meta: int = 64 << 20):
        self.pos = 0
        self.segments: list[list] = []
        self.valid = True
        self.max_meta = max_meta
        self._meta = 0

    def meta(self, pos: int, data: bytes | memoryview) -> None:
        end = pos + len(data)
        if not self.valid or end <= self.pos:
            return  # read again after a short backward seek: already recorded
        if pos > self.pos:
            self.valid = False
            return
        new = bytes(data[self.pos - pos :])
        self._meta += len(new)
        if self._meta > self.max_meta:
            self.valid, self.segments = False, []
            return
        if self.segments and self.segments[-1][0] == "meta":
            self.segments[-1][1] += new
        else:
            self.segments.append(["meta", new])
        self.pos = end

    def data(self, pos: int, n: int, tag: dict) -> None:
        if not self.valid:
            return
        if pos != self.pos:
            self.valid = False
            return
        last = self.segments[-1] if self.segments else None
        if last is not None and last[0] == "file" and last[1] is tag:
            last[2] += n
        else:
            self.segments.append(["file", tag, n])
        self.pos += n


class Stream:
    """A forward-only file object over byte chunks (each valid until the
    next is asked for): ``read``, ``tell``, ``seek`` forward (and a few bytes
    back), and :meth:`copy_to` that hands out slices without copying."""

    def __init__(self, chunks: Iterator[bytes | memoryview], *, start: int = 0, journal: Journal | None = None):
        self._chunks = chunks
        self._cur: memoryview = memoryview(b"")
        self._at = 0  # position in _cur
        self._pos = start  # stream position: the chunks begin at ``start`` of the blob
        self.journal = journal
        self._tail = b""  # the last bytes before _pos, for short backward seeks
        self._back = b""  # bytes to read again after a backward seek
        self.eof = False

    def _fill(self) -> bool:
        while self._at >= len(self._cur):
            try:
                nxt = next(self._chunks)
            except StopIteration:
                self.eof = True
                return False
            self._cur, self._at = memoryview(nxt), 0
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        at = self._pos
        out = bytearray()
        while n < 0 or len(out) < n:
            if self._back:
                take = self._back[: (len(self._back) if n < 0 else n - len(out))]
                out += take
                self._back = self._back[len(take) :]
                self._pos += len(take)
                continue
            if not self._fill():
                break
            end = len(self._cur) if n < 0 else min(len(self._cur), self._at + n - len(out))
            out += self._cur[self._at : end]
            self._pos += end - self._at
            self._at = end
        data = bytes(out)
        self._tail = (self._tail + data)[-1024:]
        if self.journal is not None:
            self.journal.meta(at, data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self._pos
        elif whence != 0:
            raise OSError("cannot seek from the end of a stream")
        if pos < self._pos:
            back = self._pos - pos
            if back > len(self._tail):
                raise OSError(f"cannot seek back from {self._pos} to {pos} in a stream")
            self._back = self._tail[-back:] + self._back
            self._tail = self._tail[:-back]
            self._pos = pos
            return pos
        self.skip(pos - self._pos)
        return pos

    def skip(self, n: int) -> None:
        self.copy_to(n, None)

    def copy_to(self, n: int, write: Callable[[memoryview], None] | None,
                hasher: "hashlib._Hash | None" = None, tag: dict | None = None) -> None:
        """Pass the next ``n`` bytes to ``write`` (and ``hasher``); ``tag``
        names the staged file they go to, for the journal."""
        left = n
        while left and self._back:
            take = self._back[:left]
            self._back = self._back[len(take) :]
            self._hand(memoryview(take), write, hasher, tag)
            left -= len(take)
        while left:
            if not self._fill():
                raise BadLayer("the layer ends in the middle of a file (truncated blob?)")
            end = min(len(self._cur), self._at + left)
            view = self._cur[self._at : end]
            self._at = end
            self._hand(view, write, hasher, tag)
            left -= len(view)
        if n:
            self._tail = b""

    def _hand(self, view: memoryview, write: Callable[[memoryview], None] | None,
              hasher: "hashlib._Hash | None", tag: dict | None) -> None:
        if write is not None:
            write(view)
        if hasher is not None:
            hasher.update(view)
        if self.journal is not None:
            if write is not None and tag is not None:
                self.journal.data(self._pos, len(view), tag)
            else:
                self.journal.meta(self._pos, view)
        self._pos += len(view)

    def drain(self) -> int:
        """Read to the end (so the whole blob is hashed); bytes skipped."""
        n = 0
        while self._fill():
            view = self._cur[self._at :]
            self._at = len(self._cur)
            self._hand(view, None, None, None)
            n += len(view)
        self._tail = b""
        return n

    def readable(self) -> bool:
        return True


def sniff(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def decompressed(chunks: Iterator[bytes | memoryview], media_type: str,
                 seen: Callable[[str], None] | None = None) -> Iterator[bytes | memoryview]:
    """The tar bytes of a layer blob: decompressed when its first bytes say
    gzip or zstd (media types lie: some tools label plain tars ``+gzip``).
    ``seen`` is told which (``"none"``, ``"gzip"``, ``"zstd"``)."""
    first = b""
    for c in chunks:
        if len(c):
            first = bytes(c)
            break
    if not first:
        return
    kind = sniff(first)
    if seen is not None:
        seen(kind)

    def rest() -> Iterator[bytes | memoryview]:
        yield first
        yield from chunks

    if kind == "none":
        yield from rest()
    elif kind == "gzip":
        yield from _gunzip(rest())
    else:
        yield from _unzstd(rest())


def _gunzip(chunks: Iterator[bytes | memoryview]) -> Iterator[bytes]:
    d = zlib.decompressobj(wbits=31)
    for c in chunks:
        data: bytes | memoryview = c
        while data:
            out = d.decompress(data, OUT_CHUNK)
            if out:
                yield out
            if d.eof:
                data = d.unused_data
                if data.strip(b"\0"):
                    d = zlib.decompressobj(wbits=31)  # concatenated gzip members
                else:
                    data = b""
            else:
                data = d.unconsumed_tail
    while not d.eof:
        out = d.decompress(b"", OUT_CHUNK)
        if not out:
            break
        yield out
    if not d.eof:
        raise BadLayer("the gzip stream ends early (truncated blob?)")


def _unzstd(chunks: Iterator[bytes | memoryview]) -> Iterator[bytes]:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - a dependency
        raise BadLayer("zstd layers need the zstandard package (pip install zstandard)") from None
    reader = zstandard.ZstdDecompressor().stream_reader(Stream(chunks), read_size=1 << 20,
                                                        read_across_frames=True)
    try:
        while True:
            out = reader.read(OUT_CHUNK)
            if not out:
                break
            yield out
    except zstandard.ZstdError as e:
        raise BadLayer(f"zstd: {e}") from None


# ---------------------------------------------------------------- walking tars


def members(stream: Stream, label: str) -> Iterator[tarfile.TarInfo]:
    """The members of the tar on ``stream``, in order; member data is read by
    the caller from ``stream`` (``member.offset_data``) or skipped."""
    try:
        tf = tarfile.TarFile(fileobj=stream, mode="r")  # type: ignore[arg-type]
    except tarfile.ReadError as e:
        if stream.eof and stream.tell() == 0:
            return  # an empty blob: no members
        raise BadLayer(f"{label}: not a tar archive ({e})") from None
    if tf.firstmember is None:
        return  # at the end already (tarfile would seek back to check, which a stream cannot)
    while True:
        try:
            m = tf.next()
        except tarfile.ReadError as e:
            raise BadLayer(f"{label}: broken tar ({e})") from None
        if m is None:
            return
        tf.members = []  # nothing is looked up by name: do not keep every header
        yield m


def _remove(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


@dataclass
class Written:
    """A file :meth:`LayerWriter.commit` put in place."""

    path: str  # relative to the destination
    size: int
    sha256: str | None
    stat: tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode: unchanged since written


def signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


@dataclass
class _Pending:
    temp: str
    size: int
    sha256: str | None
    mtime: int | None


@dataclass
class LayerWriter:
    """Applies one layer's members to ``dest`` (see the module docstring).

    ``ordered``: the layer may hold whiteouts, links and overwrites (a layer
    that does not list its files); otherwise only directories and regular
    files are accepted. ``hash_files``: compute each file's sha256 while
    writing (for layers that do not list them).
    """

    dest: str  # a realpath
    staging: str  # a folder inside dest, same filesystem
    selection: Selection
    label: str
    ordered: bool = True
    hash_files: bool = False
    known: dict[str, str] = field(default_factory=dict)  # rel -> sha256 listed by the layer
    pending: dict[str, _Pending] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    removed: list[str] = field(default_factory=list)
    keep_staged: Callable[[], bool] | None = None  # on failure: leave staged files for a journal
    _safe: set[str] = field(default_factory=set)
    _cut: str | None = None  # the staged file a failure interrupted

    # -- safety

    def _path(self, rel: str) -> str:
        return os.path.join(self.dest, rel)

    def check_parent(self, rel: str, name: str) -> None:
        """Refuse to write below a symlink (or anything that resolves elsewhere)."""
        parent = posixpath.dirname(rel)
        if not parent or parent in self._safe:
            return
        want = os.path.normpath(self._path(parent))
        if os.path.realpath(want) != want:
            raise UnsafeLayer(f"{self.label}: {name!r} would be written through a symlink "
                              f"({parent} is one, or lies below one); refusing the layer")
        self._safe.add(parent)

    def _filtered(self, m: tarfile.TarInfo, rel: str, linkname: str | None = None) -> tarfile.TarInfo:
        changes = {"name": rel}
        if linkname is not None:
            changes["linkname"] = linkname
        try:
            return tarfile.data_filter(m.replace(**changes, deep=False), self.dest)  # type: ignore[arg-type]
        except tarfile.FilterError as e:
            raise UnsafeLayer(f"{self.label}: {m.name!r}: {_filter_reason(e)}; refusing the layer") from None

    # -- applying

    def apply(self, stream: Stream) -> None:
        for m in members(stream, self.label):
            self._member(m, stream)

    def _member(self, m: tarfile.TarInfo, stream: Stream) -> None:
        name = normalize(m.name, self.label)
        if not name:
            return
        base, parent = posixpath.basename(name), posixpath.dirname(name)
        if base.startswith(WHITEOUT):
            if not self.ordered:
                raise BadLayer(f"{self.label}: lists its files but holds the whiteout {m.name!r}")
            if base == OPAQUE:
                self._opaque(parent)
            elif not base.startswith(WHITEOUT + WHITEOUT):  # .wh..wh.* are aufs bookkeeping
                self._whiteout(posixpath.join(parent, base[len(WHITEOUT):]), m.name)
            return
        rel = self.selection.relative(name)
        if rel is None or rel == "":
            return
        if rel.split("/", 1)[0] == RESERVED:
            raise UnsafeLayer(f"{self.label}: {m.name!r} would overwrite the puller's own {RESERVED} folder")
        if not self.ordered and not (m.isreg() or m.isdir()):
            raise BadLayer(f"{self.label}: lists its files but holds {m.name!r}, which is not a regular file")
        if m.isdir():
            if self.selection.all_dirs:
                self._filtered(m, rel)
                self.check_parent(rel, m.name)
                path = self._path(rel)
                if os.path.lexists(path) and not os.path.isdir(path) or os.path.islink(path):
                    _remove(path)
                os.makedirs(path, exist_ok=True)
                self.touched.add(rel)
            return
        if not self.selection.wants(rel):
            return
        if m.islnk():
            self._hardlink(m, rel)
            return
        f = self._filtered(m, rel)
        self.check_parent(rel, m.name)
        if m.issym():
            self._drop_pending(rel)
            path = self._path(rel)
            if os.path.lexists(path):
                _remove(path)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(f.linkname, path)
            self.touched.add(rel)
            self._safe.clear()
            return
        # a regular file (data_filter refused everything else)
        self._file(m, f, rel, stream)

    def _temp(self) -> tuple[int, str]:
        return tempfile.mkstemp(suffix=".tmp", dir=self.staging)

    def _file(self, m: tarfile.TarInfo, f: tarfile.TarInfo, rel: str, stream: Stream) -> None:
        if m.issparse():  # GNU sparse: let tarfile expand the holes
            raise BadLayer(f"{self.label}: {m.name!r} is a sparse file, which this puller does not read")
        fd, temp = self._temp()
        tag = {"temp": os.path.basename(temp), "rel": rel, "size": m.size,
               "mode": (f.mode if f.mode is not None else 0o644) & 0o7777, "mtime": int(m.mtime) if m.mtime else None}
        stream.seek(m.offset_data)
        self._fill_file(fd, temp, tag, 0, stream)

    def _fill_file(self, fd: int, temp: str, tag: dict, have: int, stream: Stream) -> None:
        """Bytes ``have..size`` of the member ``tag`` describes, from ``stream``
        into the staged file ``fd``; then it is pending (renamed in by :meth:`commit`)."""
        h = hashlib.sha256() if self.hash_files else None
        try:
            def write(view: memoryview) -> None:
                while view:
                    n = os.write(fd, view)
                    view = view[n:]

            stream.copy_to(tag["size"] - have, write, h, tag)
            os.fchmod(fd, tag["mode"])
        except BaseException:
            os.close(fd)
            self._cut = temp  # removed by abort(), unless a journal keeps it
            raise
        os.close(fd)
        self._pend(tag, ("sha256:" + h.hexdigest()) if h else None)

    def _pend(self, tag: dict, sha256: str | None) -> None:
        rel = tag["rel"]
        self._drop_pending(rel)
        self.pending[rel] = _Pending(os.path.join(self.staging, tag["temp"]), tag["size"],
                                     sha256 or self.known.get(rel), tag["mtime"])
        self.touched.add(rel)

    def resume(self, journal: Journal, stream: Stream) -> None:
        """Take up a layer a journal recorded: its finished files are pending
        again, the file it was cut in is filled from ``stream`` (positioned
        at the journal's end), and the stream is moved on to the next header.
        Only for layers that list their files (``hash_files`` False)."""
        cut: tuple[dict, int] | None = None
        for kind, tag, *n in journal.segments:
            if kind != "file":
                continue
            if n[0] == tag["size"]:
                self._pend(tag, None)
            else:
                cut = (tag, n[0])
        if cut is None:
            return
        tag, have = cut
        temp = os.path.join(self.staging, tag["temp"])
        fd = os.open(temp, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        self._fill_file(fd, temp, tag, have, stream)
        stream.skip(-tag["size"] % tarfile.BLOCKSIZE)

    def _hardlink(self, m: tarfile.TarInfo, rel: str) -> None:
        target_name = normalize(m.linkname, self.label)
        target = self.selection.relative(target_name)
        if not target:
            return  # its target is outside what is pulled: nothing to link to
        f = self._filtered(m, rel, target)
        del f
        self.check_parent(rel, m.name)
        self._drop_pending(rel)
        if target in self.pending:
            src = self.pending[target]
            fd, temp = self._temp()
            os.close(fd)
            os.unlink(temp)
            os.link(src.temp, temp)
            self.pending[rel] = _Pending(temp, src.size, src.sha256, src.mtime)
        else:
            path, source = self._path(rel), self._path(target)
            if not os.path.isfile(source) or os.path.islink(source):
                return  # the target was not pulled (filtered out)
            if os.path.lexists(path):
                _remove(path)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.link(source, path)
        self.touched.add(rel)

    def _drop_pending(self, rel: str) -> None:
        old = self.pending.pop(rel, None)
        if old is not None:
            os.unlink(old.temp)

    # -- whiteouts

    def _whiteout(self, name: str, shown: str) -> None:
        rel = self.selection.covering(name)
        if rel is None:
            return
        if rel == "":
            self._clear("")
            return
        if rel.split("/", 1)[0] == RESERVED or rel in self.touched:
            return
        self.check_parent(rel, shown)
        path = self._path(rel)
        if os.path.lexists(path):
            _remove(path)
            self._safe.clear()
        self.removed.append(rel)

    def _opaque(self, parent: str) -> None:
        rel = self.selection.covering(parent)
        if rel is None:
            return
        if rel:
            self.check_parent(rel + "/x", parent)
        self._clear(rel)

    def _clear(self, rel: str) -> None:
        """Remove what lower layers left in ``rel``, keeping this layer's own."""
        path = self._path(rel) if rel else self.dest
        if not os.path.isdir(path) or os.path.islink(path):
            return
        for child in os.listdir(path):
            crel = posixpath.join(rel, child) if rel else child
            if crel == RESERVED:
                continue
            if crel in self.touched:
                if os.path.isdir(self._path(crel)) and not os.path.islink(self._path(crel)):
                    self._clear(crel)
                continue
            _remove(self._path(crel))
            self.removed.append(crel)
        self._safe.clear()

    # -- finishing

    def commit(self) -> list[Written]:
        """Rename the staged files into place (after the digest was checked)."""
        out = []
        for rel, p in self.pending.items():
            self.check_parent(rel, rel)
            path = self._path(rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            if p.mtime is not None:
                os.utime(p.temp, (p.mtime, p.mtime))
            os.replace(p.temp, path)
            out.append(Written(rel, p.size, p.sha256, signature(os.lstat(path))))
        self.pending.clear()
        return out

    def abort(self) -> None:
        """Remove the staged files (unless ``keep_staged`` says a journal needs them)."""
        cut, self._cut = self._cut, None
        if self.keep_staged is not None and self.keep_staged():
            self.pending.clear()
            return
        if cut is not None:
            try:
                os.unlink(cut)
            except OSError:
                pass
        for p in self.pending.values():
            try:
                os.unlink(p.temp)
            except OSError:
                pass
        self.pending.clear()


def _filter_reason(e: tarfile.FilterError) -> str:
    if isinstance(e, tarfile.AbsolutePathError):
        return "is an absolute path"
    if isinstance(e, tarfile.OutsideDestinationError):
        return "would land outside the destination"
    if isinstance(e, tarfile.SpecialFileError):
        return "is a device, fifo or socket"
    if isinstance(e, tarfile.AbsoluteLinkError):
        return "links to an absolute path"
    if isinstance(e, tarfile.LinkOutsideDestinationError):
        return "links outside the destination"
    return str(e)


# ---------------------------------------------------------------- a tree in memory


@dataclass(frozen=True)
class Node:
    kind: str  # "file" | "symlink"
    size: int = 0
    sha256: str | None = None
    link: str | None = None


@dataclass
class TreeModel:
    """What a sequence of layers leaves in the destination, computed without
    writing: regular files with their sha256, symlinks with their targets."""

    selection: Selection
    nodes: dict[str, Node] = field(default_factory=dict)

    def apply(self, stream: Stream, label: str) -> None:
        touched: set[str] = set()
        for m in members(stream, label):
            name = normalize(m.name, label)
            if not name:
                continue
            base, parent = posixpath.basename(name), posixpath.dirname(name)
            if base.startswith(WHITEOUT):
                if base == OPAQUE:
                    rel = self.selection.covering(parent)
                    if rel is not None:
                        self._drop(rel, keep=touched)
                elif not base.startswith(WHITEOUT + WHITEOUT):
                    rel = self.selection.covering(posixpath.join(parent, base[len(WHITEOUT):]))
                    if rel is not None:
                        self._drop(rel, keep=touched, itself=True)
                continue
            rel = self.selection.relative(name)
            if not rel or m.isdir() or not self.selection.wants(rel):
                continue
            if m.isreg():
                h = hashlib.sha256()
                stream.seek(m.offset_data)
                stream.copy_to(m.size, None, h)
                self.nodes[rel] = Node("file", m.size, "sha256:" + h.hexdigest())
            elif m.issym():
                self.nodes[rel] = Node("symlink", link=m.linkname)
            elif m.islnk():
                target = self.selection.relative(normalize(m.linkname, label))
                if target and target in self.nodes:
                    self.nodes[rel] = self.nodes[target]
            touched.add(rel)

    def add(self, rel: str, node: Node) -> None:
        self.nodes[rel] = node

    def _drop(self, rel: str, *, keep: set[str], itself: bool = False) -> None:
        for key in list(self.nodes):
            if key in keep:
                continue
            inside = not rel or key.startswith(rel + "/")
            if inside or (itself and key == rel):
                del self.nodes[key]


def paths_overlap(paths: Sequence[str]) -> bool:
    """Whether any two paths are equal or one lies below the other."""
    seen = sorted(paths)
    return any(b == a or b.startswith(a + "/") for a, b in zip(seen, seen[1:]))


def dest_files(dest: Path) -> dict[str, os.stat_result]:
    """Files and symlinks under ``dest`` (relative POSIX paths), without the
    puller's own folder."""
    out: dict[str, os.stat_result] = {}
    for root, dirs, files in os.walk(dest):
        rel_root = os.path.relpath(root, dest)
        if rel_root == ".":
            dirs[:] = [d for d in dirs if d != RESERVED]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = name if rel_root == "." else f"{rel_root}/{name}".replace(os.sep, "/")
            out[rel] = os.lstat(os.path.join(root, name))
    return out
