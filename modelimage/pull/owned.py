"""What modelimage owns in DEST: what is in the way of a layer, and
removing what modelimage wrote.

:class:`Ownership` answers from the :class:`~.state.Record` and what is on
disk: :meth:`~Ownership.conflicts` lists the paths a layer would change
that modelimage did not write (and adopts files that already hold the
image's bytes); :meth:`~Ownership.remove_current` applies a whiteout or an
opaque directory to what this image's earlier layers put there (OCI image
spec, ``layer.md``: whiteouts apply to lower layers only);
:meth:`~Ownership.remove_old` removes what a pull of another image wrote.
A folder is removed only when empty, and nothing is removed through a
symlink.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable

from ..durable import fsync_dir
from ..errors import PullConflict, PullError, UnsafeLayer
from .extract import Entry
from .state import Record, hash_file

ADDS = ("dir", "file", "symlink", "link")


def lstat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _real_dir(path: str) -> bool:
    st = lstat_or_none(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def ancestors(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class Ownership:
    """DEST (a realpath) and its record; ``overwrite``: what modelimage did
    not write may be replaced too."""

    def __init__(self, dest: str, record: Record, *, overwrite: bool = False):
        self.dest, self.record, self.overwrite = dest, record, overwrite
        self._dirs: set[str] = set()  # folders whose entries changed: fsynced before the record counts them
        self.holding: dict[str, str] = {}  # folder modelimage made -> a path in it that it did not write

    def path(self, rel: str) -> str:
        return os.path.join(self.dest, rel) if rel else self.dest

    def touch(self, folder: str) -> None:
        """``folder``'s entries changed (fsynced by :meth:`sync`)."""
        self._dirs.add(folder)

    def conflicts(self, entries: Iterable[Entry], label: str) -> tuple[list[str], set[str]]:
        """(paths in DEST that modelimage did not write and that the entries
        would change, files that already hold the entry's bytes and are
        adopted). Raises UnsafeLayer for a write through a symlink."""
        blocked: list[str] = []
        adopt: set[str] = set()
        entries = list(entries)
        gone = {v for e in entries if e.kind in ("whiteout", "opaque")
                for v in self.record.current_under(e.rel) if e.kind == "whiteout" or v != e.rel}
        made: dict[str, str] = {}  # what this layer makes, by path, so far
        for e in entries:
            if e.kind not in ADDS:
                continue
            absent = False  # a folder on the way is not there (yet): neither is the path
            for a in ancestors(e.rel):
                kind = made.get(a)
                if kind == "symlink" or (kind is None and a not in gone and self._symlink_here(a)):
                    raise UnsafeLayer(f"{label}: {e.name!r} would be written through a symlink ({a} is one); "
                                      "refusing the layer")
                if kind is not None:
                    if kind != "dir" or not _real_dir(self.path(a)):
                        absent = True  # what is at ``a`` now goes before this entry is written
                        break
                    continue
                st = None if a in gone else lstat_or_none(self.path(a))
                if st is None:
                    absent = True
                    break
                if not stat.S_ISDIR(st.st_mode) and not self.record.owned(a):
                    blocked.append(a)
                    break
            made[e.rel] = "file" if e.kind == "link" else e.kind
            st = None if absent or e.rel in gone else lstat_or_none(self.path(e.rel))
            if st is None or e.rel in blocked:
                continue
            if self.record.owned(e.rel):
                foreign = self._foreign_inside(e.rel) if e.kind != "dir" and stat.S_ISDIR(st.st_mode) else None
                if foreign is not None:
                    self.holding[e.rel] = foreign  # a folder modelimage made, now holding the user's files
                    blocked.append(e.rel)
                continue
            if e.kind == "dir" and stat.S_ISDIR(st.st_mode):
                continue  # a folder that was there: the layer's files go into it
            if (e.kind == "file" and stat.S_ISREG(st.st_mode) and st.st_size == e.size and e.sha256
                    and hash_file(self.path(e.rel)) == e.sha256):
                adopt.add(e.rel)
                continue
            blocked.append(e.rel)
        return blocked, adopt

    def _foreign_inside(self, rel: str) -> str | None:
        """Something in the folder at ``rel`` that modelimage did not write (the first found), or None."""
        for root, dirs, files in os.walk(self.path(rel)):
            for name in sorted(dirs + files):
                sub = os.path.relpath(os.path.join(root, name), self.dest).replace(os.sep, "/")
                if not self.record.owned(sub):
                    return sub
        return None

    def _symlink_here(self, rel: str) -> bool:
        """A symlink at ``rel`` that this image's layers put there."""
        st = lstat_or_none(self.path(rel))
        return st is not None and stat.S_ISLNK(st.st_mode) and self.record.current(rel)

    def refuse(self, blocked: list[str], what: str) -> None:
        """Stop: ``blocked`` paths are in the way (see :meth:`conflicts`)."""
        first = blocked[0]
        more = f" ({len(blocked) - 1} more: {', '.join(blocked[1:4])}{', ...' if len(blocked) > 4 else ''})" \
            if len(blocked) > 1 else ""
        if first in self.holding:
            raise PullConflict(f"{self.path(first)}: {what} has a file there, and the folder there holds "
                               f"{self.holding[first]}, which modelimage did not write; move it away or pull with "
                               f"--overwrite{more}")
        raise PullConflict(f"{self.path(first)}: {what} has a file there, and what is there now was not written "
                           f"by modelimage; move it away or pull with --overwrite{more}")

    def remove_current(self, rel: str, *, itself: bool) -> int:
        """A whiteout (``itself``) or an opaque directory: remove what this
        image's earlier layers put at/below ``rel``, nothing else; how many."""
        n = 0
        for victim in self.record.current_under(rel):
            if victim == rel and not itself:
                continue
            self.remove(victim)
            n += 1
        return n

    def remove(self, rel: str) -> None:
        """Remove one path modelimage wrote (a folder only when empty) and
        forget it; never through a symlink."""
        path = self.path(rel)
        parent = os.path.dirname(path)
        if os.path.realpath(parent) != os.path.normpath(parent):
            raise PullError(f"{path}: a folder on its way is now a symlink; refusing to remove through it")
        kind = self.record.entries.get(rel, {}).get("kind")
        st = lstat_or_none(path)
        self.record.forget(rel)
        if st is None:
            return
        if kind == "dir":
            if stat.S_ISDIR(st.st_mode):
                try:
                    os.rmdir(path)
                except OSError as e:
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    return  # it holds files modelimage did not write: it stays
        elif not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
        else:
            return  # not what was written there any more
        self._dirs.add(parent)

    def remove_old(self) -> None:
        """Remove what modelimage wrote for another image and the new image
        does not hold (folders only when empty), then make it durable."""
        for rel in self.record.old():
            self.remove(rel)
        self.sync()

    def sync(self) -> None:
        """fsync every folder whose entries changed."""
        for d in sorted(self._dirs, key=lambda p: -p.count("/")):
            if os.path.isdir(d):
                fsync_dir(d)
        self._dirs.clear()
