"""A tar layer read into the staging folder, nothing in DEST touched.

:class:`TarStager` reads a layer's members as their bytes arrive and turns
them into a :class:`StagedLayer`: regular files written (and fsynced: big ones each, small ones together at the
layer's end) into staging files, everything else (directories, symlinks, hard links,
whiteouts, opaque directories) kept as :class:`Entry` records in tar
order. :mod:`.apply` applies a staged layer to DEST once the blob matched
its digest, so a layer that fails its digest changes nothing.

Checks made here, on names alone: every member passes
``tarfile.data_filter`` (Python 3.11.4+) against a root that does not
exist: no absolute paths, no ``..`` components, no device, fifo or socket
entries, no links pointing outside, setuid/setgid/sticky bits and
group/other write bits dropped. A bare ``.wh.`` is an error (OCI image
spec: a whiteout names a path); ``.wh..wh.*`` other than the opaque marker
are aufs bookkeeping and ignored. Checks that depend on DEST (symlinks on
disk, files modelimage did not write) are :mod:`.apply`'s.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..durable import Writeback
from ..errors import BadLayer, UnsafeLayer
from .changes import Change, member_change
from .layers import Layer, Selection, normalize
from .state import RECORD, STAGING, fsync_files
from .stream import Journal, Stream, members

RESERVED = (STAGING, RECORD)  # the puller's own names at DEST's root
SYNC_EACH = 1 << 20  # staged files this big are fsynced at once; smaller ones together per layer

EntryKind = Literal["dir", "file", "symlink", "link", "whiteout", "opaque"]


@dataclass
class Entry:
    """One change a layer makes, DEST-relative. ``file``: ``temp`` is the
    staged file (``size`` bytes, ``sha256``, ``mode``, ``mtime``);
    ``symlink``: ``link`` is its target; ``link``: a hard link to ``link``,
    a file an earlier layer put in DEST; ``whiteout``: remove ``rel``;
    ``opaque``: remove what earlier layers put below ``rel`` (``""``: the
    whole subtree). ``name`` is the member's name, for messages."""

    kind: EntryKind
    rel: str
    name: str = ""
    temp: str | None = None
    size: int = 0
    sha256: str | None = None
    mode: int = 0o644
    mtime: int | None = None
    link: str | None = None


@dataclass
class StagedLayer:
    """A layer, read and staged: its entries in tar order; ``files_seen``
    counts regular files anywhere in it (selected or not) and ``elsewhere``
    names a few top folders outside the selection, for a pull that finds
    nothing to write. ``journal``: how a plain tar that lists its files was
    consumed (to keep it for the next run if it is not applied)."""

    layer: Layer
    entries: list[Entry] = field(default_factory=list)
    files_seen: int = 0
    elsewhere: set[str] = field(default_factory=set)
    journal: Journal | None = None

    def temps(self) -> list[str]:
        return [e.temp for e in self.entries if e.temp is not None]

    def discard(self) -> None:
        """Remove the staged files."""
        for temp in self.temps():
            try:
                os.unlink(temp)
            except OSError:
                pass
        self.entries.clear()


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


def checked(m: tarfile.TarInfo, rel: str, label: str, root: str, linkname: str | None = None) -> tarfile.TarInfo:
    """``m`` renamed to ``rel`` through ``tarfile.data_filter`` against
    ``root``; UnsafeLayer names the member and the reason."""
    changes = {"name": rel}
    if linkname is not None:
        changes["linkname"] = linkname
    try:
        return tarfile.data_filter(m.replace(**changes, deep=False), root)  # type: ignore[arg-type]
    except tarfile.FilterError as e:
        raise UnsafeLayer(f"{label}: {m.name!r}: {_filter_reason(e)}; refusing the layer") from None


def data_mode(mode: int | None) -> int | None:
    """A regular file's mode as ``tarfile.data_filter`` leaves it (no high
    bits, no group/other write, owner read+write, exec bits only if the
    owner's). For a name :func:`~.layers.normalize` accepted, under a root
    that does not exist, this is all the filter changes: its realpath
    checks (two per member, an lstat per path part) cannot fail there, and
    cost a third of a 100,000-file pull."""
    if mode is None:
        return None
    mode &= 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


@dataclass
class TarStager:
    """Reads one tar layer into ``staging`` (see the module docstring).

    ``ordered``: the layer may hold whiteouts, links and overwrites (it does
    not list its files); otherwise only directories and regular files are
    accepted. ``hash_files``: compute each file's sha256 while writing (for
    layers that do not list them); ``known``: rel -> sha256 the layer lists.
    """

    staging: str  # a realpath
    selection: Selection
    label: str
    layer: Layer
    ordered: bool = True
    hash_files: bool = False
    known: dict[str, str] = field(default_factory=dict)
    keep_staged: Callable[[], bool] | None = None  # on failure: leave staged files for a journal
    _cut: str | None = None  # the staged file a failure interrupted

    def __post_init__(self) -> None:
        self.staged = StagedLayer(self.layer)
        self._root = os.path.join(self.staging, ".root")  # never created: data_filter checks names alone
        self._files: dict[str, Entry] = {}  # rel -> the entry now last for it
        self._unsynced: list[str] = []  # small staged files written but not yet fsynced

    def sync(self) -> None:
        """Make the small staged files durable, together (:func:`~.state.fsync_files`)."""
        paths, self._unsynced = self._unsynced, []
        fsync_files(paths, self.staging)

    # -- reading

    def apply(self, stream: Stream) -> StagedLayer:
        for m in members(stream, self.label):
            self._member(m, stream)
        self.sync()
        return self.staged

    def _add(self, e: Entry) -> None:
        """Entries apply in tar order, each replacing what is at its path
        (a file that replaced a folder removed what was in it, even if a
        later entry puts a folder there again)."""
        self._files[e.rel] = e  # the one a hard link in this layer refers to
        self.staged.entries.append(e)

    def _member(self, m: tarfile.TarInfo, stream: Stream) -> None:
        change = member_change(m, self.label)  # the names' rules: .changes
        if change is None:
            return
        if change.kind in ("whiteout", "opaque"):
            self._whiteout(m, change)
            return
        name = change.path
        if m.isreg():
            self.staged.files_seen += 1
        rel = self.selection.relative(name)
        if rel is None:
            if m.isreg():
                self.staged.elsewhere.add("/".join(name.split("/")[:2]))
            return
        if rel == "":
            return
        if rel.split("/", 1)[0] in RESERVED:
            raise UnsafeLayer(f"{self.label}: {m.name!r} would overwrite the puller's own {rel.split('/', 1)[0]}")
        if not self.ordered and not (m.isreg() or m.isdir()):
            raise BadLayer(f"{self.label}: lists its files but holds {m.name!r}, which is not a regular file")
        if m.isdir():
            if self.selection.all_dirs:
                checked(m, rel, self.label, self._root)
                self._add(Entry("dir", rel, m.name))
            return
        if not self.selection.wants(rel):
            return
        if m.islnk():
            self._hardlink(m, rel, change)
            return
        if m.isreg() and not m.issparse():
            mode = data_mode(m.mode)  # a normalized name under a root that does not exist: only the mode to filter
        else:
            f = checked(m, rel, self.label, self._root)
            if m.issym():
                self._add(Entry("symlink", rel, m.name, link=f.linkname))
                return
            if m.issparse():
                raise BadLayer(f"{self.label}: {m.name!r} is a sparse file, which this puller does not read")
            mode = f.mode  # a regular file (data_filter refused everything else)
        fd, temp = tempfile.mkstemp(suffix=".tmp", dir=self.staging)
        tag = {"temp": os.path.basename(temp), "rel": rel, "size": m.size,
               "mode": (mode if mode is not None else 0o644) & 0o7777, "mtime": int(m.mtime) if m.mtime else None}
        stream.seek(m.offset_data)
        self._fill(fd, temp, tag, 0, stream, m.name)

    def _whiteout(self, m: tarfile.TarInfo, change: Change) -> None:
        if not self.ordered:
            raise BadLayer(f"{self.label}: lists its files but holds the whiteout {m.name!r}")
        rel = self.selection.covering(change.path)
        if rel is not None:
            self.staged.entries.append(Entry(change.kind, rel, m.name))  # type: ignore[arg-type]

    def _hardlink(self, m: tarfile.TarInfo, rel: str, change: Change) -> None:
        assert change.link is not None
        target = self.selection.relative(normalize(change.link, self.label))
        if not target or not self.selection.wants(target):
            return  # its target is outside what is pulled: nothing to link to
        checked(m, rel, self.label, self._root, target)
        src = self._files.get(target)
        if src is not None and src.kind == "file" and src.temp is not None:
            fd, temp = tempfile.mkstemp(suffix=".tmp", dir=self.staging)
            os.close(fd)
            os.unlink(temp)
            os.link(src.temp, temp)
            self._add(Entry("file", rel, m.name, temp, src.size, src.sha256, src.mode, src.mtime))
        elif src is not None and src.kind == "symlink":
            self._add(Entry("symlink", rel, m.name, link=src.link))  # a link to a symlink is that symlink
        elif src is not None and src.kind == "link":
            self._add(Entry("link", rel, m.name, link=src.link))  # to a link of this layer: to what it links to
        elif src is not None and src.kind == "dir":
            raise BadLayer(f"{self.label}: {m.name!r} is a hard link to the directory {m.linkname!r}")
        else:
            self._add(Entry("link", rel, m.name, link=target))  # to a file of an earlier layer: resolved in DEST

    def _fill(self, fd: int, temp: str, tag: dict, have: int, stream: Stream, name: str) -> None:
        """Bytes ``have..size`` of the member ``tag`` describes, from
        ``stream`` into the staged file ``fd`` (fsynced); then it is an entry."""
        h = hashlib.sha256() if self.hash_files else None
        flush = Writeback(fd, have)  # the disk writes while the rest streams: the fsync waits for the tail
        try:
            def write(view: memoryview) -> None:
                done = 0
                try:
                    while done < len(view):
                        done += os.write(fd, view[done:])
                except OSError as e:
                    e.written = done  # type: ignore[attr-defined]  # for the journal (Stream._hand)
                    raise
                flush.wrote(done)

            try:
                stream.copy_to(tag["size"] - have, write, h, tag)
                os.fchmod(fd, tag["mode"])
                if tag["size"] >= SYNC_EACH:
                    os.fsync(fd)
                else:
                    self._unsynced.append(temp)
            except OSError as e:
                if e.filename is None:
                    e.filename = temp
                e.pull_doing = f"staging {tag['rel']} ({tag['size']:,} bytes)"  # type: ignore[attr-defined]
                raise
        except BaseException:
            os.close(fd)
            self._cut = temp  # removed by abort(), unless a journal keeps it
            raise
        os.close(fd)
        rel = tag["rel"]
        sha256 = ("sha256:" + h.hexdigest()) if h else self.known.get(rel)
        self._add(Entry("file", rel, name, temp, tag["size"], sha256, tag["mode"], tag["mtime"]))

    def resume(self, journal: Journal, stream: Stream) -> None:
        """Take up a layer a journal recorded: its finished files are entries
        again, the file it was cut in is filled from ``stream`` (positioned
        at the journal's end), and the stream is moved on to the next header.
        Only for layers that list their files (``hash_files`` False)."""
        cut: tuple[dict, int] | None = None
        for kind, tag, *n in journal.segments:
            if kind != "file":
                continue
            if n[0] == tag["size"]:
                self._add(Entry("file", tag["rel"], tag["rel"], os.path.join(self.staging, tag["temp"]), tag["size"],
                                self.known.get(tag["rel"]), tag["mode"], tag["mtime"]))
            else:
                cut = (tag, n[0])
        if cut is None:
            return
        tag, have = cut
        temp = os.path.join(self.staging, tag["temp"])
        fd = os.open(temp, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        self._fill(fd, temp, tag, have, stream, tag["rel"])
        self.sync()
        stream.skip(-tag["size"] % tarfile.BLOCKSIZE)

    def abort(self) -> None:
        """Remove the staged files (unless ``keep_staged`` says a journal needs them)."""
        cut, self._cut = self._cut, None
        if self.keep_staged is not None and self.keep_staged():
            return
        if cut is not None:
            try:
                os.unlink(cut)
            except OSError:
                pass
        self.staged.discard()
