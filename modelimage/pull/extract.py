"""Safe extraction of one tar layer into a directory, whiteouts included.

:class:`LayerWriter` applies one layer. Every member passes
``tarfile.data_filter`` (Python 3.11.4+): no absolute paths, nothing that
resolves outside the destination, no device, fifo or socket entries, no
links pointing outside, setuid/setgid/sticky bits and group/other write
bits dropped. Names with a ``..`` component or a leading ``/`` are refused
outright, and so is writing below a path that is a symlink on disk.
Regular files are written into a staging directory inside the destination
and renamed into place by :meth:`LayerWriter.commit` once the caller has
checked the layer's digest: a file that looks complete is complete.
Whiteouts (``.wh.NAME``, ``.wh..wh..opq``) remove what lower layers put
there, as the OCI image spec says (image-spec ``layer.md``, "Whiteouts").
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import BadLayer, UnsafeLayer
from .layers import Selection, normalize
from .state import signature
from .stream import Journal, Stream, members

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
RESERVED = ".modelimage-pull"  # the puller's own folder inside the destination


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


@dataclass
class _Pending:
    temp: str
    size: int
    sha256: str | None
    mtime: int | None


@dataclass
class Guard:
    """Where a layer may write: paths inside ``dest`` (a realpath), never
    through a symlink on disk; members through ``tarfile.data_filter``."""

    dest: str
    label: str
    _safe: set[str] = field(default_factory=set)  # parents checked since the tree last changed

    def path(self, rel: str) -> str:
        return os.path.join(self.dest, rel)

    def check_parent(self, rel: str, name: str) -> None:
        """Refuse to write below a symlink (or anything that resolves elsewhere)."""
        parent = posixpath.dirname(rel)
        if not parent or parent in self._safe:
            return
        want = os.path.normpath(self.path(parent))
        if os.path.realpath(want) != want:
            raise UnsafeLayer(f"{self.label}: {name!r} would be written through a symlink "
                              f"({parent} is one, or lies below one); refusing the layer")
        self._safe.add(parent)

    def forget(self) -> None:
        """The tree changed (a symlink made, something removed): check parents again."""
        self._safe.clear()

    def filtered(self, m: tarfile.TarInfo, rel: str, linkname: str | None = None) -> tarfile.TarInfo:
        changes = {"name": rel}
        if linkname is not None:
            changes["linkname"] = linkname
        try:
            return tarfile.data_filter(m.replace(**changes, deep=False), self.dest)  # type: ignore[arg-type]
        except tarfile.FilterError as e:
            raise UnsafeLayer(f"{self.label}: {m.name!r}: {_filter_reason(e)}; refusing the layer") from None


@dataclass
class Whiteouts:
    """A layer's whiteouts, applied to what lower layers left in the
    destination; the layer's own entries (``touched``) stay."""

    guard: Guard
    selection: Selection
    touched: set[str]
    removed: list[str]

    def whiteout(self, name: str, shown: str) -> None:
        rel = self.selection.covering(name)
        if rel is None:
            return
        if rel == "":
            self._clear("")
            return
        if rel.split("/", 1)[0] == RESERVED or rel in self.touched:
            return
        self.guard.check_parent(rel, shown)
        path = self.guard.path(rel)
        if os.path.lexists(path):
            _remove(path)
            self.guard.forget()
        self.removed.append(rel)

    def opaque(self, parent: str) -> None:
        rel = self.selection.covering(parent)
        if rel is None:
            return
        if rel:
            self.guard.check_parent(rel + "/x", parent)
        self._clear(rel)

    def _clear(self, rel: str) -> None:
        """Remove what lower layers left in ``rel``, keeping this layer's own."""
        path = self.guard.path(rel) if rel else self.guard.dest
        if not os.path.isdir(path) or os.path.islink(path):
            return
        for child in os.listdir(path):
            crel = posixpath.join(rel, child) if rel else child
            if crel == RESERVED:
                continue
            if crel in self.touched:
                if os.path.isdir(self.guard.path(crel)) and not os.path.islink(self.guard.path(crel)):
                    self._clear(crel)
                continue
            _remove(self.guard.path(crel))
            self.removed.append(crel)
        self.guard.forget()


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
    _cut: str | None = None  # the staged file a failure interrupted

    def __post_init__(self) -> None:
        self.guard = Guard(self.dest, self.label)
        self.whiteouts = Whiteouts(self.guard, self.selection, self.touched, self.removed)

    def _path(self, rel: str) -> str:
        return self.guard.path(rel)

    def check_parent(self, rel: str, name: str) -> None:
        """Refuse to write below a symlink (or anything that resolves elsewhere)."""
        self.guard.check_parent(rel, name)

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
                self.whiteouts.opaque(parent)
            elif not base.startswith(WHITEOUT + WHITEOUT):  # .wh..wh.* are aufs bookkeeping
                self.whiteouts.whiteout(posixpath.join(parent, base[len(WHITEOUT):]), m.name)
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
                self.guard.filtered(m, rel)
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
        f = self.guard.filtered(m, rel)
        self.check_parent(rel, m.name)
        if m.issym():
            self._drop_pending(rel)
            path = self._path(rel)
            if os.path.lexists(path):
                _remove(path)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(f.linkname, path)
            self.touched.add(rel)
            self.guard.forget()
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
        f = self.guard.filtered(m, rel, target)
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
