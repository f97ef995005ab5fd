"""A verified, staged layer applied to DEST, touching only what modelimage owns.

:class:`DestWriter` applies :class:`~modelimage.pull.extract.StagedLayer`\\ s
in manifest order, after each blob matched its digest:

1. :meth:`~.owned.Ownership.conflicts`: before anything changes, every path the
   layer writes is checked against DEST and the :class:`~.state.Record`: a
   file, symlink or non-directory that modelimage did not write stops the
   pull (:class:`~modelimage.errors.PullConflict`, naming the path), unless
   ``overwrite``; a file that already holds the image's bytes is adopted
   (left as it is); a symlink on the way (in DEST, or made by this layer)
   refuses the layer.
2. Whiteouts and opaque directories remove only what earlier layers of the
   same image put in DEST (OCI image spec, ``layer.md`` "Whiteouts": they
   apply to lower layers only, whatever their place in the tar): the order
   :func:`~.changes.split_layer` gives, the rules :mod:`.changes` holds for
   ``inspect REF`` and ``verify`` too.
3. The layer's entries, in tar order (a later one for the same path wins):
   directories made, staged files renamed into place, symlinks and hard
   links made. Everything written is recorded as modelimage's (intent saved
   before the first change), and made durable: staged files were fsynced,
   folders are fsynced after the renames, then the record is saved.

What is modelimage's, what is in the way and how it is removed is
:mod:`.owned`'s; :meth:`~.owned.Ownership.remove_old` removes what an
earlier pull of another image wrote and the new image does not hold.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile

from ..errors import BadLayer, PullConflict, UnsafeLayer
from .changes import split_layer
from .extract import Entry, StagedLayer
from .owned import Ownership, ancestors, lstat_or_none
from .state import Record


class DestWriter:
    """Applies staged layers to ``dest`` (a realpath) and keeps ``record``
    up to date. ``staging``: a folder on DEST's filesystem for links made
    before a layer's whiteouts apply. ``overwrite``: replace what modelimage
    did not write instead of stopping."""

    def __init__(self, dest: str, record: Record, staging: str, *, overwrite: bool = False):
        self.dest, self.record, self.staging, self.overwrite = dest, record, staging, overwrite
        self.owned = Ownership(dest, record, overwrite=overwrite)
        self.path = self.owned.path

    # ------------------------------------------------------------ 2 and 3. applying

    def apply(self, staged: StagedLayer) -> None:
        """Apply one verified layer (see the module docstring). Raises
        PullConflict, UnsafeLayer, BadLayer, or OSError (with its path)."""
        label = staged.layer.label
        blocked, adopt = self.owned.conflicts(staged.entries, label)
        if blocked and not self.overwrite:
            self.owned.refuse(blocked, label.split(": layer")[0] + f" (layer {staged.layer.index + 1})")
        removals, adds = split_layer(staged.entries)  # THE order (.changes): removals reach lower layers only
        linked = [self._resolve_link(e, label) for e in adds if e.kind == "link"]
        removed = 0
        for e in removals:
            removed += self.owned.remove_current(e.rel, itself=e.kind == "whiteout")
        self.record.applied.append(staged.layer.desc.digest)
        if not adds and not removed:
            return  # nothing of this layer is in the selection: DEST and the record stay as they are
        for e in adds:
            if e.rel not in adopt:
                self.record.intend(e.rel, "symlink" if e.kind == "symlink" else e.kind)
        self.record.save()
        done: list[str] = []
        for e in adds:
            if e.rel in adopt:
                if e.temp is not None:
                    os.unlink(e.temp)
                self.record.put(e.rel, "file", size=e.size, sha256=e.sha256, adopted=True)
                continue
            self._add(e, label)
            done.append(e.rel)
        self.owned.sync()
        for rel in done + [t for t in linked if t]:
            e = self.record.entries.get(rel)
            if e is not None:  # stat signatures after every rename and link of the layer
                self.record.put(rel, e["kind"], size=e.get("size", 0), sha256=e.get("sha256"), link=e.get("link"))
        self.record.save()

    def _resolve_link(self, e: Entry, label: str) -> str | None:
        """A hard link to a file an earlier layer put in DEST becomes a staged
        file (linked before this layer's whiteouts apply) or, to a symlink,
        that symlink. Returns the target (its stat changes)."""
        assert e.link is not None
        src = self.path(e.link)
        st = lstat_or_none(src)
        if st is None or not self.record.current(e.link):
            raise BadLayer(f"{label}: {e.name!r} is a hard link to {e.link!r}, which no earlier layer holds")
        if stat.S_ISLNK(st.st_mode):
            e.kind, e.link = "symlink", os.readlink(src)
            return None
        if not stat.S_ISREG(st.st_mode):
            raise BadLayer(f"{label}: {e.name!r} is a hard link to {e.link!r}, which is not a file")
        fd, temp = tempfile.mkstemp(suffix=".tmp", dir=self.staging)
        os.close(fd)
        os.unlink(temp)
        os.link(src, temp)
        rec = self.record.entries[e.link]
        target = e.link
        e.kind, e.temp, e.size, e.sha256, e.link = "file", temp, st.st_size, rec.get("sha256"), None
        e.mode, e.mtime = stat.S_IMODE(st.st_mode), None
        return target

    def _add(self, e: Entry, label: str) -> None:
        path = self.path(e.rel)
        self._parents(e.rel, label)
        st = lstat_or_none(path)
        if e.kind == "dir":
            if st is not None and stat.S_ISDIR(st.st_mode):
                return  # there already (ours, or a folder that was there: not recorded)
            if st is not None:
                self._clear(e.rel, st)
            os.mkdir(path)
            self.record.put(e.rel, "dir")
        else:
            if st is not None and stat.S_ISDIR(st.st_mode):
                self._clear(e.rel, st)
            if e.kind == "file":
                assert e.temp is not None
                if e.mtime is not None:
                    os.utime(e.temp, (e.mtime, e.mtime))
                os.replace(e.temp, path)
                self.record.put(e.rel, "file", size=e.size, sha256=e.sha256)
            else:
                assert e.link is not None
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    os.unlink(path)
                os.symlink(e.link, path)
                self.record.put(e.rel, "symlink", link=e.link)
        self.owned.touch(os.path.dirname(path))

    def _parents(self, rel: str, label: str) -> None:
        """Make ``rel``'s folders (recorded as modelimage's); a file or an old
        symlink of modelimage's on the way is replaced by a folder."""
        for a in ancestors(rel):
            p = self.path(a)
            st = lstat_or_none(p)
            if st is not None and stat.S_ISDIR(st.st_mode):
                continue
            if st is not None:
                if stat.S_ISLNK(st.st_mode) and self.record.current(a):
                    raise UnsafeLayer(f"{label}: {rel!r} would be written through a symlink ({a} is one); "
                                      "refusing the layer")
                self._clear(a, st)
            os.mkdir(p)
            self.record.put(a, "dir")
            self.owned.touch(os.path.dirname(p))

    def _clear(self, rel: str, st: os.stat_result) -> None:
        """Remove what is at ``rel`` so something else can go there: what
        modelimage wrote, or anything with ``overwrite``."""
        path = self.path(rel)
        if stat.S_ISDIR(st.st_mode):
            for victim in self.record.current_under(rel) + [k for k in self.record.old() if
                                                             k == rel or k.startswith(rel + "/")]:
                self.owned.remove(victim)
            if os.path.isdir(path):
                try:
                    os.rmdir(path)
                except OSError as e:
                    if e.errno != errno.ENOTEMPTY or not self.overwrite:
                        raise PullConflict(f"{path}: the image puts a file there, but the folder holds files "
                                           "modelimage did not write; move them away or pull with --overwrite") \
                            from None
                    shutil.rmtree(path)
        elif self.record.owned(rel) or self.overwrite:
            os.unlink(path)
        else:
            raise PullConflict(f"{path}: the image needs this path, and what is there was not written by "
                               "modelimage; move it away or pull with --overwrite")
        self.record.forget(rel)
        self.owned.touch(os.path.dirname(path))

