"""Streaming one blob into a layout: what the directory and the archive
sinks share (a layer from the model's files, a blob of another image, the
tagged descriptor of a manifest)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Protocol

from ..errors import OutputError
from ..layerfile import write_layer_fd
from ..oci import ANNOTATION_REF_NAME, LAYOUT_VERSION, Descriptor
from ..sink import BlobSource
from ..tarstream import Digester, LayerResult, LayerStream, blob_chunks


class BlobWriter(Protocol):
    """One blob being written: bytes in, then committed under its digest
    or aborted (nothing of it stays)."""

    def write(self, data: bytes | memoryview) -> None: ...
    def fileno(self) -> int | None: ...  # a file the kernel may copy into at its position, if any
    def error(self, e: OSError) -> OutputError: ...
    def commit(self, digest: str) -> None: ...
    def abort(self) -> None: ...


def stream_into(w: BlobWriter, stream: LayerStream, compression: str,
                progress: Callable[[int], None] | None) -> LayerResult:
    """Write a layer's blob into ``w``, committing it under its digest."""
    digester = Digester(stream, compression)  # type: ignore[arg-type]
    try:
        fd = w.fileno() if compression == "none" else None
        if fd is not None:
            try:  # the kernel copies source ranges into the blob file
                write_layer_fd(stream, digester, fd, progress)
            except OSError as e:
                raise w.error(e) from None
        else:
            for data in blob_chunks(stream, digester, progress=progress):
                w.write(data)
        result = digester.result()
    except BaseException:
        w.abort()
        raise
    w.commit(result.digest)
    return result


def copy_into(w: BlobWriter, desc: Descriptor, source: BlobSource) -> str:
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


def tagged(manifest: Descriptor, tag: str) -> Descriptor:
    """``manifest``'s descriptor as index.json lists it under ``tag``."""
    return Descriptor(manifest.media_type, manifest.digest, manifest.size,
                      annotations={**manifest.annotations, ANNOTATION_REF_NAME: tag},
                      platform=manifest.platform, artifact_type=manifest.artifact_type)


def layout_marker() -> bytes:
    """The ``oci-layout`` file (image-spec image-layout.md)."""
    return json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()
