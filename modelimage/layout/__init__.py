"""OCI image layouts on disk, read and written: a directory
(``oci:DIR[:TAG]``) or a single tar (``oci-archive:FILE[:TAG]``).

* :mod:`.ref` names them (:class:`LayoutRef`);
* :mod:`.directory` and :mod:`.archive` write them as build sinks,
  atomically and durably (:mod:`.durable`), and list their files for reading;
* :mod:`.read` reads them as skopeo, podman, umoci, crane and oras write
  them (:class:`LayoutReader`): tagged or not, indexes, blobs in place.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ConfigError, SourceError
from ..oci import Descriptor
from .archive import ArchiveMembers, ArchiveSink
from .directory import DirectoryMembers, LayoutSink
from .read import LayoutReader
from .ref import DEFAULT_TAG, LayoutRef

__all__ = ["DEFAULT_TAG", "ArchiveSink", "LayoutReader", "LayoutRef", "LayoutSink", "open_layout", "open_sink",
           "read_layout"]


def open_sink(ref: LayoutRef) -> LayoutSink | ArchiveSink:
    """The sink that writes ``ref``. Raises :class:`ConfigError` for a
    digest reference (a build writes a tag) and
    :class:`~modelimage.errors.OutputError` when it cannot be created."""
    if ref.digest:
        raise ConfigError(f"{ref}: a build writes a tag (oci:DIR:TAG), not a digest")
    return LayoutSink(ref) if ref.transport == "oci" else ArchiveSink(ref)


def open_layout(ref: LayoutRef) -> LayoutReader:
    """``ref``'s layout for reading (its index is read on first use).
    Raises :class:`SourceError` when there is no such layout."""
    if ref.transport == "oci":
        if ref.path.is_file():
            raise SourceError(f"{ref.text}: {ref.path} is a file; an archive is named oci-archive:{ref.path}[:TAG]")
        if not ref.path.is_dir():
            raise SourceError(f"{ref.text}: no such layout directory")
        return LayoutReader(ref, DirectoryMembers(ref.path))
    if ref.path.is_dir():
        raise SourceError(f"{ref.text}: {ref.path} is a folder; a layout folder is named oci:{ref.path}[:TAG]")
    return LayoutReader(ref, ArchiveMembers(ref.path))


def read_layout(ref: LayoutRef) -> tuple[Descriptor, dict[str, Any]]:
    """The descriptor ``ref`` means in its layout and that manifest (or
    index), parsed. Raises :class:`SourceError`."""
    layout = open_layout(ref)
    try:
        desc = layout.top()
        return desc, json.loads(layout.blob_bytes(desc))
    except ValueError as e:
        raise SourceError(f"{ref.text}: manifest {desc.digest[:19]} is not JSON ({e})") from None
    finally:
        layout.close()
