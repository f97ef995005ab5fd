"""An OCI layout in one tar file (``oci-archive:FILE[:TAG]``), written and read.

Writing: one pass straight into ``FILE.partial-*``; each blob's tar header
is patched in place once its digest is known; ``oci-layout`` and
``index.json`` come last, the file is synced, renamed, and its directory
synced, so an archive that exists is complete.

Reading: the tar's headers are read once (a few blocks per member); blobs
are then read from their offsets in the file, never extracted. Archives
written by skopeo, podman (``podman save --format oci-archive``) and
modelimage are plain (uncompressed) tars.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..durable import fsync_dir
from ..errors import OutputError, SourceError
from ..oci import Descriptor, Index
from ..sink import BlobSource
from ..tarstream import LayerResult, LayerStream
from .blobs import copy_into, layout_marker, stream_into, tagged
from .durable import remove_empty
from .ref import LayoutRef


class _ArchiveBlob:
    """A blob streamed into the archive after a placeholder header."""

    def __init__(self, sink: "ArchiveSink"):
        self.sink = sink
        self.f = sink.f
        self.start = self.f.tell()
        self.f.write(b"\0" * tarfile.BLOCKSIZE)
        self.size = 0

    def fileno(self) -> None:
        return None  # buffered: bytes go through write()

    def error(self, e: OSError) -> OutputError:
        return OutputError(f"{self.sink.ref.path}: cannot write: {e.strerror or e}")

    def write(self, data: bytes | memoryview) -> None:
        try:
            self.f.write(data)
        except OSError as e:
            raise self.error(e) from None
        self.size += len(data)

    def commit(self, digest: str) -> None:
        if digest in self.sink.written:  # the same blob twice: drop the copy
            self.abort()
            return
        try:
            end = self.f.tell()
            self.f.seek(self.start)
            self.f.write(_blob_header(digest, self.size))
            self.f.seek(end)
            self.f.write(b"\0" * (-self.size % tarfile.BLOCKSIZE))
        except OSError as e:
            raise self.error(e) from None
        self.sink.written.add(digest)

    def abort(self) -> None:
        self.f.seek(self.start)
        self.f.truncate()


def _blob_header(digest: str, size: int) -> bytes:
    alg, _, hex_ = digest.partition(":")
    info = tarfile.TarInfo(f"blobs/{alg}/{hex_}")
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uname = info.gname = ""
    # GNU format: one 512-byte block for this short name, base-256 sizes past 8 GiB
    return info.tobuf(format=tarfile.GNU_FORMAT)


class ArchiveSink:
    """Writes an OCI layout as one tar file (a :class:`modelimage.sink.Sink`)."""

    parallel = 1  # one file, written front to back

    def __init__(self, ref: LayoutRef):
        self.ref = ref
        if ref.path.is_dir():  # found now, not after every blob is written
            raise OutputError(f"{ref.path} is a folder; an archive is a file (a layout folder is oci:{ref.path})")
        self.parent = ref.path.absolute().parent
        self.created_parents = [p for p in (self.parent, *self.parent.parents) if not p.exists()]  # innermost first
        try:
            self.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{ref.path.name}.partial-", dir=self.parent)
        except OSError as e:
            raise OutputError(f"{ref.path}: cannot write: {e.strerror or e}") from e
        self.tmp = Path(name)
        self.f: BinaryIO = os.fdopen(fd, "w+b")
        self.written: set[str] = set()
        for d in ("blobs/", "blobs/sha256/"):
            self._member(d, b"", directory=True)

    def _member(self, name: str, data: bytes, directory: bool = False) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
        info.mode, info.size, info.mtime = (0o755 if directory else 0o644), len(data), 0
        info.uname = info.gname = ""
        self.f.write(info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE))

    def has_blob(self, digest: str) -> bool:
        return digest in self.written

    def put_layer(self, stream: LayerStream, *, compression: str, known: LayerResult | None,
                  progress: Callable[[int], None] | None) -> tuple[LayerResult, str]:
        return stream_into(_ArchiveBlob(self), stream, compression, progress), "written"

    def put_existing(self, desc: Descriptor, source: BlobSource) -> str:
        return copy_into(_ArchiveBlob(self), desc, source)

    def put_blob(self, data: bytes, digest: str) -> None:
        if digest not in self.written:
            w = _ArchiveBlob(self)
            w.write(data)
            w.commit(digest)

    def put_manifest(self, manifest: Descriptor, data: bytes) -> None:
        """The manifest, ``oci-layout`` and ``index.json``, then the file is
        synced and renamed into place, and its directory synced."""
        self.put_blob(data, manifest.digest)
        try:
            self._member("oci-layout", layout_marker())
            self._member("index.json", Index((tagged(manifest, self.ref.tag),)).to_bytes())
            self.f.write(b"\0" * (2 * tarfile.BLOCKSIZE))
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.ref.path)
            for d in (self.parent, *(p.parent for p in self.created_parents)):
                fsync_dir(d)  # the rename, and the directories this run created
        except OSError as e:
            raise OutputError(f"{self.ref.path}: cannot write: {e.strerror or e}") from None

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        self.tmp.unlink(missing_ok=True)
        remove_empty(self.created_parents)

    def close(self) -> None:
        pass


class ArchiveMembers:
    """The regular files of an archive: ``name -> (archive, offset, size)``,
    from one read of the tar's headers."""

    def __init__(self, path: Path):
        self.path = path
        self.table: dict[str, tuple[Path, int, int]] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for m in tar:
                    if m.isreg():
                        self.table[os.path.normpath(m.name).lstrip("/")] = (path, m.offset_data, m.size)
        except FileNotFoundError:
            raise SourceError(f"{path}: no such file") from None
        except tarfile.ReadError as e:
            raise SourceError(f"{path}: not a tar archive ({e}); an oci-archive is an uncompressed tar "
                              "of an OCI layout (decompress it first if it is gzipped)") from None
        except OSError as e:
            raise SourceError(f"{path}: cannot read: {e.strerror or e}") from None

    def locate(self, name: str) -> tuple[Path, int, int] | None:
        return self.table.get(name)

    def close(self) -> None:
        pass
