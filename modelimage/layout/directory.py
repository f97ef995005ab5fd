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

    def __init__(self, ref: LayoutRef):
        self.ref = ref
        self.root = ref.path
        self.created_root = not self.root.exists()
        self.created_parents = [p for p in self.root.parents if not p.exists()]  # innermost first
        try:
            self.blobs = self.root / "blobs" / "sha256"
            self.blobs.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{self.root}: cannot create layout: {e.strerror or e}") from e
        if not self.created_root and (self.root / "index.json").exists():
            _read_index(self.root)  # refuse to touch something that is not a layout

    def has_blob(self, digest: str) -> bool:
        return (self.blobs / digest.split(":", 1)[1]).is_file()

    def put_layer(self, stream: LayerStream, *, compression: str, known: LayerResult | None,
                  progress: Callable[[int], None] | None) -> tuple[LayerResult, str]:
        return stream_into(BlobFile(self.blobs), stream, compression, progress), "written"

    def put_existing(self, desc: Descriptor, source: BlobSource) -> str:
        return copy_into(BlobFile(self.blobs), desc, source)

    def put_blob(self, data: bytes, digest: str) -> None:
        if not self.has_blob(digest):
            w = BlobFile(self.blobs)
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
        atomic_write(self.root / "oci-layout", layout_marker())
        with locked(self.root):
            index = _read_index(self.root) if (self.root / "index.json").exists() else Index(())
            keep = tuple(m for m in index.manifests if m.annotations.get(ANNOTATION_REF_NAME) != self.ref.tag)
            atomic_write(self.root / "index.json",
                         Index(keep + (tagged(manifest, self.ref.tag),), index.annotations).to_bytes())

    def abort(self) -> None:
        """Undo what this run created (the whole directory if it was new)."""
        if self.created_root:
            shutil.rmtree(self.root, ignore_errors=True)
            remove_empty(self.created_parents)
        else:
            for tmp in self.blobs.glob(".partial-*"):
                tmp.unlink(missing_ok=True)

    def close(self) -> None:
        pass


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
