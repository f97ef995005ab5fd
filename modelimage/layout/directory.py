"""An OCI image layout directory (``oci:DIR[:TAG]``), written and read.

Writing: every blob goes to a temporary file, is synced and renamed to its
digest once complete; the blob directory is synced, then ``oci-layout``
and ``index.json`` are written last (temp, sync, rename, sync of the
directory, under a lock), so a layout that looks complete is complete, on
disk too, and an interrupted build leaves only temporaries that the next
run replaces.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from ..durable import fsync_dir
from ..errors import OutputError
from ..oci import ANNOTATION_REF_NAME, Descriptor, Index
from ..sink import BlobSource
from ..tarstream import LayerResult, LayerStream
from .blobs import copy_into, layout_marker, stream_into, tagged
from .durable import BlobFile, atomic_write, locked, remove_empty
from .ref import LayoutRef


class LayoutSink:
    """Writes blobs and a tagged manifest into an OCI layout directory
    (a :class:`modelimage.sink.Sink`)."""

    parallel = 2  # two layers at once: hashing and I/O overlap on 2 cores

    left_behind = "nothing was written: the layout is as it was"  # what abort leaves (sink.left_behind)

    def __init__(self, ref: LayoutRef):
        self.ref = ref
        self.root = ref.path
        self.created_root = not self.root.exists()
        self.created_parents = [p for p in self.root.parents if not p.exists()]  # innermost first
        self.blobs = self.root / "blobs" / "sha256"
        # what this run made in a directory that was there: undone by abort (innermost first)
        self.created_dirs = [d for d in (self.blobs, self.blobs.parent) if not d.exists()]
        self.created: set[Path] = set()  # blobs this run added (not there before)
        self.writing: set[BlobFile] = set()
        self.lock = threading.Lock()
        self.aborted = False
        if not self.created_root and (self.root / "index.json").exists():
            _read_index(self.root)  # refuse to touch something that is not a layout
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.abort()
            raise OutputError(f"{self.root}: cannot create layout: {e.strerror or e}") from e

    def has_blob(self, digest: str) -> bool:
        return (self.blobs / digest.split(":", 1)[1]).is_file()

    def _blob(self) -> "_TrackedBlob":
        with self.lock:
            if self.aborted:
                raise OutputError(f"{self.root}: the build was stopped")
            return _TrackedBlob(self)

    def put_layer(self, stream: LayerStream, *, compression: str, known: LayerResult | None,
                  progress: Callable[[int], None] | None) -> tuple[LayerResult, str]:
        return stream_into(self._blob(), stream, compression, progress), "written"

    def put_existing(self, desc: Descriptor, source: BlobSource) -> str:
        return copy_into(self._blob(), desc, source)

    def put_blob(self, data: bytes, digest: str) -> None:
        if not self.has_blob(digest):
            w = self._blob()
            w.write(data)
            w.commit(digest)

    def put_manifest(self, manifest: Descriptor, data: bytes) -> None:
        """Store the manifest blob, make every blob durable, then point
        ``TAG`` at the manifest in index.json (durably too)."""
        self.put_blob(data, manifest.digest)
        try:
            for d in (self.blobs, self.blobs.parent, self.root, *([self.root.parent] if self.created_root else [])):
                fsync_dir(d)  # the blobs' renames, and new directories, before anything names them
        except OSError as e:
            raise OutputError(f"{self.root}: cannot write: {e.strerror or e}") from None
        marker = self.root / "oci-layout"
        if not marker.exists():
            self.created.add(marker)
        atomic_write(marker, layout_marker())
        with locked(self.root):
            index = _read_index(self.root) if (self.root / "index.json").exists() else Index(())
            keep = tuple(m for m in index.manifests if m.annotations.get(ANNOTATION_REF_NAME) != self.ref.tag)
            atomic_write(self.root / "index.json",
                         Index(keep + (tagged(manifest, self.ref.tag),), index.annotations).to_bytes())

    def abort(self) -> None:
        """Undo what this run created: the whole directory if it was new;
        in one that was there, its temporaries, the blobs it added and the
        folders it made, so the layout is as it was. Called as a build
        stops (Ctrl-C, a failure), while layers may still be streaming,
        and again once they have stopped: from then on no blob is started
        or committed, so the second call leaves nothing behind."""
        with self.lock:
            self.aborted = True
            writing, created = list(self.writing), list(self.created)
        for w in writing:
            w.tmp.unlink(missing_ok=True)
        if self.created_root:
            shutil.rmtree(self.root, ignore_errors=True)
            remove_empty(self.created_parents)
            return
        for path in created:
            path.unlink(missing_ok=True)
        remove_empty(self.created_dirs)

    def close(self) -> None:
        pass


class _TrackedBlob(BlobFile):
    """A blob file whose temporary, and the blob once committed (when it
    is new), the sink knows, to undo; refused once the sink is aborted."""

    def __init__(self, sink: LayoutSink):
        super().__init__(sink.blobs)
        self.sink = sink
        sink.writing.add(self)

    def commit(self, digest: str) -> None:
        final = self.blobs / digest.split(":", 1)[1]
        try:
            os.fsync(self.f.fileno())  # the slow part, outside the lock (commit syncs again: nothing left to write)
        except OSError as e:
            self.abort()
            raise self.error(e) from None
        with self.sink.lock:
            if self.sink.aborted:
                self.abort()
                raise OutputError(f"{self.sink.root}: the build was stopped")
            new = not final.exists()
            super().commit(digest)
            if new:
                self.sink.created.add(final)
            self.sink.writing.discard(self)

    def abort(self) -> None:
        super().abort()
        self.sink.writing.discard(self)


def _read_index(root: Path) -> Index:
    try:
        return Index.from_json(json.loads((root / "index.json").read_bytes()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OutputError(f"{root}/index.json: not an OCI image index ({e})") from None


class DirectoryMembers:
    """The files of a layout directory, for :class:`~.read.LayoutReader`."""

    def __init__(self, root: Path):
        self.root = root

    def locate(self, name: str) -> tuple[Path, int, int] | None:
        path = self.root / name
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (path, 0, st.st_size) if stat.S_ISREG(st.st_mode) else None

    def close(self) -> None:
        pass
