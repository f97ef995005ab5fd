"""OCI image layouts on disk: a directory (``oci:DIR[:TAG]``) or a single
tar (``oci-archive:FILE[:TAG]``), written atomically.

Directory: every blob is written to a temporary file and renamed to its
digest once complete; ``oci-layout`` and ``index.json`` are written last
(temp + rename, under a lock), so a layout that looks complete is complete,
and an interrupted build leaves only temporaries that the next run replaces.

Archive: one pass straight into ``FILE.partial-*``; each blob's tar header is
patched in place once its digest is known, then the file is renamed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import ConfigError, OutputError
from .oci import ANNOTATION_REF_NAME, LAYOUT_VERSION, Descriptor, Index
from .sink import BlobSource
from .tarstream import Digester, LayerResult, LayerStream, blob_chunks, write_layer_fd

DEFAULT_TAG = "latest"
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class LayoutRef:
    """``oci:DIR[:TAG]`` or ``oci-archive:FILE[:TAG]``."""

    transport: str  # "oci" | "oci-archive"
    path: Path
    tag: str = DEFAULT_TAG

    def __str__(self) -> str:
        return f"{self.transport}:{self.path}:{self.tag}"

    @classmethod
    def parse(cls, text: str) -> "LayoutRef":
        transport, sep, rest = text.partition(":")
        if not sep or transport not in ("oci", "oci-archive") or not rest:
            raise ConfigError(f"output {text!r}: expected oci:DIR[:TAG] or oci-archive:FILE[:TAG]")
        path, tag = rest, DEFAULT_TAG
        head, colon, tail = rest.rpartition(":")
        if colon and head and "/" not in tail:
            path, tag = head, tail
        if not _TAG_RE.match(tag):
            raise ConfigError(f"output {text!r}: {tag!r} is not a valid tag")
        return cls(transport, Path(path), tag)


class _BlobFile:
    """A blob being written to a temporary file in ``blobs/sha256``."""

    def __init__(self, blobs: Path):
        fd, name = tempfile.mkstemp(prefix=".partial-", dir=blobs)
        self.tmp = Path(name)
        self.f: BinaryIO = os.fdopen(fd, "wb", buffering=0)
        self.blobs = blobs

    def write(self, data: bytes | memoryview) -> None:
        try:
            self.f.write(data)
        except OSError as e:  # a full disk, a quota: one line, and the caller cleans up
            raise OutputError(f"{self.blobs.parent.parent}: cannot write: {e.strerror or e}") from None

    def commit(self, digest: str) -> None:
        self.f.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.blobs / digest.split(":", 1)[1])

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def _stream_into(w: "_BlobFile | _ArchiveBlob", stream: LayerStream, compression: str,
                 progress: Callable[[int], None] | None) -> LayerResult:
    """Write a layer's blob into ``w``, committing it under its digest."""
    digester = Digester(stream, compression)  # type: ignore[arg-type]
    try:
        if compression == "none" and isinstance(w, _BlobFile):
            try:  # the kernel copies source ranges into the blob file
                write_layer_fd(stream, digester, w.f.fileno(), progress)
            except OSError as e:
                raise OutputError(f"{w.blobs.parent.parent}: cannot write: {e.strerror or e}") from None
        else:
            for data in blob_chunks(stream, digester, progress=progress):
                w.write(data)
        result = digester.result()
    except BaseException:
        w.abort()
        raise
    w.commit(result.digest)
    return result


def _copy_into(w: "_BlobFile | _ArchiveBlob", desc: Descriptor, source: BlobSource) -> str:
    """A blob of another image (a base's layer), streamed from where that
    image lives and verified on the way (``source.fetch``)."""
    try:
        for chunk in source.fetch(desc):
            w.write(chunk)
    except BaseException:
        w.abort()
        raise
    w.commit(desc.digest)
    return "copied"


class LayoutSink:
    """Writes blobs and a tagged manifest into an OCI layout directory."""

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
        return _stream_into(_BlobFile(self.blobs), stream, compression, progress), "written"

    def put_existing(self, desc: Descriptor, source: BlobSource) -> str:
        return _copy_into(_BlobFile(self.blobs), desc, source)

    def put_blob(self, data: bytes, digest: str) -> None:
        if not self.has_blob(digest):
            w = _BlobFile(self.blobs)
            w.write(data)
            w.commit(digest)

    def put_manifest(self, manifest: Descriptor, data: bytes) -> None:
        """Store the manifest blob and point ``TAG`` at it in index.json."""
        self.put_blob(data, manifest.digest)
        _atomic_write(self.root / "oci-layout", _layout_marker())
        with _locked(self.root):
            index = _read_index(self.root) if (self.root / "index.json").exists() else Index(())
            tagged = Descriptor(
                manifest.media_type, manifest.digest, manifest.size,
                annotations={**manifest.annotations, ANNOTATION_REF_NAME: self.ref.tag},
                platform=manifest.platform, artifact_type=manifest.artifact_type,
            )
            keep = tuple(m for m in index.manifests if m.annotations.get(ANNOTATION_REF_NAME) != self.ref.tag)
            _atomic_write(self.root / "index.json", Index(keep + (tagged,), index.annotations).to_bytes())

    def abort(self) -> None:
        """Undo what this run created (the whole directory if it was new)."""
        if self.created_root:
            shutil.rmtree(self.root, ignore_errors=True)
            _remove_empty(self.created_parents)
        else:
            for tmp in self.blobs.glob(".partial-*"):
                tmp.unlink(missing_ok=True)

    def close(self) -> None:
        pass


class _ArchiveBlob:
    """A blob streamed into the archive after a placeholder header."""

    def __init__(self, sink: "ArchiveSink"):
        self.sink = sink
        self.f = sink.f
        self.start = self.f.tell()
        self.f.write(b"\0" * tarfile.BLOCKSIZE)
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        try:
            self.f.write(data)
        except OSError as e:
            raise OutputError(f"{self.sink.ref.path}: cannot write: {e.strerror or e}") from None
        self.size += len(data)

    def commit(self, digest: str) -> None:
        if digest in self.sink.written:  # the same blob twice: drop the copy
            self.abort()
            return
        end = self.f.tell()
        self.f.seek(self.start)
        self.f.write(_blob_header(digest, self.size))
        self.f.seek(end)
        self.f.write(b"\0" * (-self.size % tarfile.BLOCKSIZE))
        self.sink.written.add(digest)

    def abort(self) -> None:
        self.f.seek(self.start)
        self.f.truncate()


def _blob_header(digest: str, size: int) -> bytes:
    info = tarfile.TarInfo("blobs/sha256/" + digest.split(":", 1)[1])
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uname = info.gname = ""
    # GNU format: one 512-byte block for this short name, base-256 sizes past 8 GiB
    return info.tobuf(format=tarfile.GNU_FORMAT)


class ArchiveSink:
    """Writes an OCI layout as one tar file (``oci-archive:``)."""

    parallel = 1  # one file, written front to back

    def __init__(self, ref: LayoutRef):
        self.ref = ref
        parent = ref.path.absolute().parent
        self.created_parents = [p for p in (parent, *parent.parents) if not p.exists()]  # innermost first
        try:
            parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{ref.path.name}.partial-", dir=parent)
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
        return _stream_into(_ArchiveBlob(self), stream, compression, progress), "written"

    def put_existing(self, desc: Descriptor, source: BlobSource) -> str:
        return _copy_into(_ArchiveBlob(self), desc, source)

    def put_blob(self, data: bytes, digest: str) -> None:
        if digest not in self.written:
            w = _ArchiveBlob(self)
            w.write(data)
            w.commit(digest)

    def put_manifest(self, manifest: Descriptor, data: bytes) -> None:
        self.put_blob(data, manifest.digest)
        tagged = Descriptor(
            manifest.media_type, manifest.digest, manifest.size,
            annotations={**manifest.annotations, ANNOTATION_REF_NAME: self.ref.tag},
            platform=manifest.platform, artifact_type=manifest.artifact_type,
        )
        self._member("oci-layout", _layout_marker())
        self._member("index.json", Index((tagged,)).to_bytes())
        self.f.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.ref.path)

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        self.tmp.unlink(missing_ok=True)
        _remove_empty(self.created_parents)

    def close(self) -> None:
        pass


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the directories a failed run created, innermost first, while
    they are empty (another run may be writing beside us)."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


def open_sink(ref: LayoutRef) -> LayoutSink | ArchiveSink:
    return LayoutSink(ref) if ref.transport == "oci" else ArchiveSink(ref)


# ---------------------------------------------------------------- reading


def _layout_marker() -> bytes:
    return json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()


def _read_index(root: Path) -> Index:
    try:
        return Index.from_json(json.loads((root / "index.json").read_bytes()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OutputError(f"{root}/index.json: not an OCI image index ({e})") from None


def read_layout(ref: LayoutRef) -> tuple[Descriptor, dict]:
    """The tagged manifest descriptor and the parsed manifest of a layout."""
    index = _read_index(ref.path)
    for m in index.manifests:
        if m.annotations.get(ANNOTATION_REF_NAME) == ref.tag:
            blob = ref.path / "blobs" / "sha256" / m.hex
            return m, json.loads(blob.read_bytes())
    raise OutputError(f"{ref.path}: no image tagged {ref.tag!r}")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the layout directory itself (no lock file)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
