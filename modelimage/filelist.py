"""Where an image built by modelimage lists each layer's files.

Each layer's files (path, size, sha256) let ``pull --include`` fetch only
the layers it needs and ``verify`` compare without downloading. They are
written where size does not matter:

* inline, as each layer's ``dev.modelimage.files`` annotation, while all the
  lists together stay under :data:`INLINE_LIMIT` (a few thousand files): the
  manifest alone says everything;
* otherwise in one more layer, the **file-list layer**: an ordinary
  uncompressed tar layer (so every engine, skopeo, podman, containerd and
  registries' garbage collection treat it as any layer) holding one file,
  ``.modelimage/files-<hash>.json`` at the image root (outside the model's
  folder, so a pull of the model or a Kubernetes image volume mounted at
  the model's folder never sees it), annotated ``dev.modelimage.filelist``.
  The manifest then stays a few hundred bytes per layer, whatever the number
  of files: 20,000 small files make a ~4.5 MB list that would not fit the
  4 MiB manifest limit (OCI distribution spec) inline.

The JSON is ``{"version": 1, "layers": [{"digest": "sha256:...", "files":
[{"path": "/models/x/a.json", "size": N, "sha256": "sha256:..."}]}]}`` in
canonical form (sorted keys, no spaces), so the same files give the same
layer and the same manifest digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from .content import Literal, VirtualFile
from .oci import ANNOTATION_FILES, ANNOTATION_PREFIX, canonical_json
from .tarstream import Entry, LayerStream

__all__ = ["ANNOTATION_FILELIST", "INLINE_LIMIT", "MAX_LIST_BYTES", "inline", "list_stream", "needs_layer",
           "read_list_layer"]

#: Marks the file-list layer (value: the format version).
ANNOTATION_FILELIST = ANNOTATION_PREFIX + "filelist"
#: Inline lists, all layers together, at most this many bytes (well under
#: the 4 MiB manifest limit, and a manifest every pull fetches first stays small).
INLINE_LIMIT = 512 * 1024
#: A file-list layer bigger than this is not read (not ours, or hostile):
#: its layers are then read as tars of unknown content.
MAX_LIST_BYTES = 256 * 2**20
VERSION = 1
FOLDER = ".modelimage"


class _File(Protocol):
    path: str
    size: int
    sha256: str


def _listing(files: Iterable[_File]) -> list[dict[str, Any]]:
    return [{"path": "/" + f.path, "size": f.size, "sha256": f.sha256} for f in files]


def inline(files: Iterable[_File]) -> dict[str, str]:
    """A layer's ``dev.modelimage.files`` annotation. Not
    ``org.opencontainers.image.title``: ORAS clients take that as the name of
    a file whose content IS the blob, and these blobs are tars."""
    return {ANNOTATION_FILES: json.dumps(_listing(files), separators=(",", ":"), sort_keys=True)}


def needs_layer(lists: Sequence[Iterable[_File]]) -> bool:
    """True when the layers' lists, inline, would take more than :data:`INLINE_LIMIT` bytes."""
    return sum(len(inline(files)[ANNOTATION_FILES]) for files in lists) > INLINE_LIMIT


def list_stream(layers: Sequence[tuple[str, Iterable[_File]]], mtime: int = 0) -> LayerStream:
    """The file-list layer for ``layers`` (each: its blob digest and its
    files), as a deterministic tar stream of one file."""
    doc = {"version": VERSION, "layers": [{"digest": digest, "files": _listing(files)} for digest, files in layers]}
    data = canonical_json(doc)
    name = f"{FOLDER}/files-{hashlib.sha256(data).hexdigest()[:16]}.json"
    return LayerStream([Entry(name, VirtualFile(name, (Literal(data),), origin="file list"))], mtime)


def read_list_layer(chunks: Iterable[bytes]) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """A file-list layer's blob (verified chunks) read back: the layer's own
    file (``[{"path", "size", "sha256"}]``) and, per layer digest, its
    files. Raises ValueError when the blob is not a list this version wrote
    (or is over :data:`MAX_LIST_BYTES`)."""
    buf = io.BytesIO()
    for chunk in chunks:
        buf.write(chunk)
        if buf.tell() > MAX_LIST_BYTES:
            raise ValueError("file list too big")
    buf.seek(0)
    try:
        with tarfile.open(fileobj=buf, mode="r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            if len(members) != 1:
                raise ValueError("not one file")
            f = tar.extractfile(members[0])
            data = f.read() if f is not None else b""
    except tarfile.TarError as e:
        raise ValueError(str(e)) from None
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("layers"), list):
        raise ValueError("not a modelimage file list")
    by_digest: dict[str, list[dict[str, Any]]] = {}
    for layer in doc["layers"]:
        if not isinstance(layer, dict) or not isinstance(layer.get("digest"), str) or not isinstance(
                layer.get("files"), list):
            raise ValueError("not a modelimage file list")
        by_digest[layer["digest"]] = layer["files"]
    own = [{"path": "/" + members[0].name.removeprefix("./"), "size": len(data),
            "sha256": "sha256:" + hashlib.sha256(data).hexdigest()}]
    return own, by_digest
