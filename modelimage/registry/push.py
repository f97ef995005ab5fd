"""Pushing to a registry: layers streamed from the files, resumable uploads,
retries that honour ``Retry-After``, blobs skipped or mounted when the
registry already has them, manifest last, then tags.

:class:`RegistrySink` is the registry as a build sink: ``build --push``
streams each layer straight from the source files into an upload (files
read once, nothing staged on disk). :func:`push_layout` pushes an OCI layout
that is already on disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..cache import DigestCache
from ..errors import ModelImageError
from ..oci import MEDIA_TYPE_INDEX, Descriptor
from ..tarstream import Digester, LayerResult, LayerStream
from .client import RegistryClient
from .reference import Reference, name_at
from .upload import DEFAULT_CONCURRENCY, SNAPSHOT_EVERY, PushSettings, PushStats, Uploader, UploadFailed

if TYPE_CHECKING:
    from ..layout import LayoutRef
    from ..sink import BlobSource

__all__ = ["DEFAULT_CONCURRENCY", "PushSettings", "PushStats", "PushedLayout", "RegistrySink", "UploadFailed",
           "push_layout"]



class _LayerSource:
    """A layer generated from the source files, hashed as it goes."""

    def __init__(self, stream: LayerStream, compression: str, progress: Callable[[int], None] | None):
        self.stream, self.compression, self.progress = stream, compression, progress
        self.resumable = compression == "none"
        self.size = stream.size if self.resumable else None
        self.digester = Digester(stream, compression)  # type: ignore[arg-type]
        self.snapshots: list[Digester] = [self.digester.copy()] if self.resumable else []
        self.reported = 0  # progress high-water mark: resent bytes are not counted twice

    def body(self, start: int, end: int | None) -> Iterator[bytes | memoryview]:
        if start != self.digester.offset:
            raise AssertionError(f"source at {self.digester.offset}, upload wants {start}")
        next_snapshot = start + SNAPSHOT_EVERY
        for data, file in self.stream.chunks(start, end):
            out = self.digester.feed(data, file)
            if self.resumable and self.digester.offset >= next_snapshot:
                self.snapshots.append(self.digester.copy())
                next_snapshot = self.digester.offset + SNAPSHOT_EVERY
            if self.progress is not None and self.digester.offset > self.reported:
                self.progress(self.digester.offset - max(self.reported, self.digester.offset - len(data)))
                self.reported = self.digester.offset
            if out:
                yield out
        if end is None or end >= self.stream.size:
            tail = self.digester.flush()
            if tail:
                yield tail

    def rewind(self, offset: int) -> int:
        if not self.resumable:
            self.digester = Digester(self.stream, self.compression)  # type: ignore[arg-type]
            return 0
        snap = max((s for s in self.snapshots if s.offset <= offset), key=lambda s: s.offset)
        self.snapshots = [s for s in self.snapshots if s.offset <= snap.offset]
        d = snap.copy()
        for data, file in self.stream.chunks(d.offset, offset):  # re-hash, not re-send
            d.feed(data, file)
        self.digester = d
        return offset

    def digest(self) -> str:
        return self.digester.result().digest

    def result(self) -> LayerResult:
        return self.digester.result()


class _FileSource:
    """A blob already on disk (an OCI layout), digest known."""

    resumable = True

    def __init__(self, path: Path, digest: str, size: int, progress: Callable[[int], None] | None,
                 offset: int = 0):  # where the blob starts in the file (an oci-archive member)
        self.path, self._digest, self.size, self.progress, self.offset = path, digest, size, progress, offset

    def body(self, start: int, end: int | None) -> Iterator[bytes]:
        end = self.size if end is None else end
        with open(self.path, "rb") as f:
            f.seek(self.offset + start)
            left = end - start
            while left:
                data = f.read(min(4 << 20, left))
                if not data:
                    raise ModelImageError(f"{self.path}: shorter than its descriptor says")
                left -= len(data)
                if self.progress is not None:
                    self.progress(len(data))
                yield data

    def rewind(self, offset: int) -> int:
        return offset

    def digest(self) -> str:
        return self._digest


class _FetchSource:
    """A blob streamed from elsewhere (a base image), digest known."""

    resumable = False

    def __init__(self, fetch: Callable[[], Iterator[bytes]], digest: str, size: int):
        self.fetch, self._digest, self.size = fetch, digest, size

    def body(self, start: int, end: int | None) -> Iterator[bytes]:
        if start:
            raise AssertionError("a fetched blob can only be sent from the start")
        yield from self.fetch()

    def rewind(self, offset: int) -> int:
        return 0

    def digest(self) -> str:
        return self._digest


class RegistrySink:
    """A registry repository as a build sink (``build --push``)."""

    def __init__(self, ref: Reference, client: RegistryClient, *, settings: PushSettings | None = None,
                 cache: DigestCache | None = None):
        settings = settings or PushSettings()
        self.ref, self.client, self.settings = ref, client, settings
        self.cache = cache or DigestCache()
        self.stats = PushStats()
        self.uploader = Uploader(client, ref.repository, settings, self.stats)
        self.parallel = max(1, settings.concurrency)
        self.mounted: set[str] = set()
        self.pushed_digest: str | None = None

    @property
    def left_behind(self) -> str:
        """What a build that fails before its manifest leaves here (:func:`modelimage.sink.left_behind`)."""
        return (f"no manifest was pushed or tagged; layers already uploaded stay in {self.ref.host}/"
                f"{self.ref.repository} unreferenced (harmless: garbage collection removes them)")

    def has_blob(self, digest: str) -> bool:
        repo = self.ref.repository
        if self.uploader.call(f"{self.ref.name}: checking {digest[:19]}",
                                    lambda: self.client.blob_exists(repo, digest)) is not None:
            return True
        for other in self.cache.repositories(digest, self.ref.host):
            if other != repo and self.client.mount(repo, digest, other):
                self.mounted.add(digest)
                self.cache.remember(digest, self.ref.host, repo)
                return True
        return False

    def put_layer(self, stream: LayerStream, *, compression: str, known: LayerResult | None,
                  progress: Callable[[int], None] | None) -> tuple[LayerResult, str]:
        from ..sink import layer_sent

        source = _LayerSource(stream, compression, progress)
        # the next layer streams once this one's last byte is read (in flight, then committed)
        self.uploader.upload(source, known.digest if known else None, on_sent=layer_sent)
        result = source.result()
        self.cache.remember(result.digest, self.ref.host, self.ref.repository)
        return result, "uploaded"

    def put_existing(self, desc: Descriptor, base: "BlobSource") -> str:
        """A base layer: mounted from the base's repository on the same
        registry, otherwise streamed through from wherever the base lives."""
        if base.host == self.ref.host and base.repository and base.repository != self.ref.repository:
            if self.client.mount(self.ref.repository, desc.digest, base.repository):
                return "mounted"
        self.uploader.upload(_FetchSource(lambda: base.fetch(desc), desc.digest, desc.size), desc.digest)
        return "copied"

    def put_blob(self, data: bytes, digest: str) -> None:
        self.uploader.call(f"{self.ref.name}: uploading the config",
                                 lambda: self.client.put_blob(self.ref.repository, data, digest))

    def put_manifest(self, manifest: Descriptor, data: bytes) -> None:
        """The manifest last (by digest), then each tag pointing at it."""
        repo = self.ref.repository
        for ref in (manifest.digest, *self._tags()):
            self.uploader.call(f"{name_at(self.ref.name, ref)}: pushing the manifest",
                                     lambda ref=ref: self.client.put_manifest(repo, ref, data, manifest.media_type))
        self.pushed_digest = manifest.digest

    def _tags(self) -> list[str]:
        tags = [self.ref.tag] if self.ref.tag else []
        return tags + [t for t in self.settings.tags if t not in tags]

    def abort(self) -> None:
        """Stop every transfer in flight (Ctrl-C, or another layer failed):
        each raises :class:`Interrupted` within one chunk of its body. No
        manifest was pushed, so nothing points at the blobs that made it; the
        registry's garbage collection takes them, and a rerun skips the ones
        that are complete."""
        self.uploader.cancel()

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class PushedLayout:
    reference: str  # host/repo@sha256:...
    digest: str
    blobs: tuple[dict, ...]


def push_layout(layout: LayoutRef, sink: RegistrySink, progress: Callable[[int], None] | None = None
                ) -> PushedLayout:
    """Push the image (or index) ``layout`` names (an OCI layout directory
    or archive, read in place by :class:`modelimage.layout.LayoutReader`)."""
    from ..layout import open_layout

    source = open_layout(layout)
    desc = source.top()
    report: list[dict] = []

    def push_blob(d: dict) -> None:
        digest, size = d["digest"], int(d["size"])
        if sink.has_blob(digest):
            report.append({"digest": digest, "size": size, "action": "mounted" if digest in sink.mounted else "exists"})
            if progress is not None:
                progress(size)
            return
        path, offset, _ = source.locate_blob(digest)
        sink.uploader.upload(_FileSource(path, digest, size, progress, offset), digest)
        sink.cache.remember(digest, sink.ref.host, sink.ref.repository)
        report.append({"digest": digest, "size": size, "action": "uploaded"})

    def push_manifest(digest: str, media_type: str, size: int, tags: list[str]) -> None:
        data = source.blob_bytes(Descriptor(media_type, digest, size))
        m = json.loads(data)
        if media_type == MEDIA_TYPE_INDEX or "manifests" in m:
            for child in m.get("manifests", []):
                push_manifest(child["digest"], child.get("mediaType", ""), int(child["size"]), [])
        else:
            push_blob(m["config"])
            with ThreadPoolExecutor(sink.parallel) as pool:
                try:
                    list(pool.map(push_blob, m.get("layers", [])))
                except BaseException:  # Ctrl-C or a failed blob: stop the others before waiting for them
                    sink.abort()
                    raise
        for ref in [digest, *tags]:
            sink.uploader.call(
                f"{name_at(sink.ref.name, ref)}: pushing the manifest",
                lambda ref=ref: sink.client.put_manifest(sink.ref.repository, ref, data, media_type
                                                         or m.get("mediaType", ""))
            )

    try:
        push_manifest(desc.digest, desc.media_type, desc.size, sink._tags())
    finally:
        source.close()
        sink.close()
    return PushedLayout(f"{sink.ref.name}@{desc.digest}", desc.digest, tuple(report))
