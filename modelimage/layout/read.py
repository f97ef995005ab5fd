"""Reading an OCI layout, a directory or an archive, as other tools write
them (skopeo, podman, umoci, crane, oras).

``index.json`` names the layout's images. Which one a reference means
(containers/image ``oci/layout`` and go-containerregistry ``layout`` agree):

* ``oci:DIR:TAG``: the entry whose ``org.opencontainers.image.ref.name``
  is TAG (several with different digests: ambiguous, an error);
* ``oci:DIR``: the only entry (``skopeo copy oci:a:v1 oci:b`` writes one
  without a name), else the one tagged ``latest``;
* ``oci:DIR@sha256:HEX``: that manifest, listed in index.json or not.

Blobs are read in place (an archive's from their offsets inside the tar,
never extracted); small ones (manifests, configs) are checked against their
digest here, layers by whoever streams them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from ..errors import SourceError
from ..oci import ANNOTATION_REF_NAME, MAX_MANIFEST_BYTES, Descriptor, Index
from .ref import DEFAULT_TAG, LayoutRef

READ_CHUNK = 4 << 20
MAX_JSON_BLOB = MAX_MANIFEST_BYTES  # manifests and configs, the same bound as from a registry
DIGEST_ALGORITHMS = ("sha256", "sha512")


class Members(Protocol):
    """Where the files of a layout are: a directory, or members of a tar."""

    def locate(self, name: str) -> tuple[Path, int, int] | None:
        """(file, offset of the bytes in it, size) of ``name`` (``index.json``,
        ``blobs/sha256/HEX``), or None when there is no such regular file."""
        ...

    def close(self) -> None: ...


class LayoutReader:
    """One OCI layout, read: its index, the image a reference means, blobs.

    Raises :class:`SourceError` (one line naming the layout) for a missing
    or malformed layout, an unknown tag, a missing blob or a blob that does
    not match its digest."""

    def __init__(self, ref: LayoutRef, members: Members):
        self.ref, self.members = ref, members
        self.name = ref.text
        self._index: Index | None = None

    def close(self) -> None:
        self.members.close()

    # ------------------------------------------------------------ the index

    def index(self) -> Index:
        if self._index is None:
            where = self.members.locate("index.json")
            if where is None:
                if self.members.locate("manifest.json") is not None:  # docker save's format, podman's default
                    raise SourceError(
                        f"{self.name}: a docker-archive (docker save, podman save), not an OCI layout; convert it: "
                        f"skopeo copy docker-archive:{self.ref.path} oci-archive:{self.ref.path}.oci.tar "
                        "(or podman save --format oci-archive)")
                raise SourceError(f"{self.name}: not an OCI layout (no index.json)")
            try:
                self._index = Index.from_json(json.loads(_read(where, MAX_JSON_BLOB)))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise SourceError(f"{self.name}: index.json is not an OCI image index ({e})") from None
        return self._index

    def top(self) -> Descriptor:
        """The descriptor the reference means (see the module docstring)."""
        entries = self.index().manifests
        if self.ref.digest:
            listed = [m for m in entries if m.digest == self.ref.digest]
            size = self._blob_size(self.ref.digest)
            if listed:
                return listed[0]
            manifest = json_object(self.blob_bytes(Descriptor("", self.ref.digest, size)),
                                   f"{self.name}: manifest {self.ref.digest[:19]}")
            return Descriptor(str(manifest.get("mediaType") or ""), self.ref.digest, size)
        tags = [m.annotations.get(ANNOTATION_REF_NAME) for m in entries]
        if self.ref.explicit_tag:
            chosen = [m for m, t in zip(entries, tags) if t == self.ref.tag]
        elif len(entries) == 1:
            chosen = list(entries)
        else:
            chosen = [m for m, t in zip(entries, tags) if t == DEFAULT_TAG]
        if len({m.digest for m in chosen}) > 1:
            raise SourceError(f"{self.name}: {len(chosen)} different images are tagged {self.ref.tag!r} "
                              f"({', '.join(m.digest[:19] for m in chosen)}); name one with "
                              f"{self.ref.transport}:{self.ref.path}@DIGEST")
        if chosen:
            return chosen[0]
        have = ", ".join(repr(t) for t in tags if t) or "none"
        untagged = sum(1 for t in tags if not t)
        have += f" and {untagged} untagged" if untagged else ""
        if not entries:
            raise SourceError(f"{self.name}: the layout holds no image (index.json lists none)")
        if self.ref.explicit_tag:
            raise SourceError(f"{self.name}: no image tagged {self.ref.tag!r} (tags: {have})")
        raise SourceError(f"{self.name}: holds {len(entries)} images (tags: {have}); name one with "
                          f"{self.ref.transport}:{self.ref.path}:TAG or @DIGEST")

    # ------------------------------------------------------------ blobs

    def locate_blob(self, digest: str) -> tuple[Path, int, int]:
        """(file, offset, size) of a blob's bytes; raises SourceError when missing."""
        alg, _, hex_ = digest.partition(":")
        where = self.members.locate(f"blobs/{alg}/{hex_}") if alg in DIGEST_ALGORITHMS and hex_ else None
        if where is None:
            raise SourceError(f"{self.name}: blob {digest[:19]} is missing")
        return where

    def has_blob(self, digest: str) -> bool:
        alg, _, hex_ = digest.partition(":")
        return self.members.locate(f"blobs/{alg}/{hex_}") is not None

    def _blob_size(self, digest: str) -> int:
        return self.locate_blob(digest)[2]

    def blob_bytes(self, desc: Descriptor, limit: int = MAX_JSON_BLOB) -> bytes:
        """A small blob (a manifest, a config), checked against its digest and size."""
        where = self.locate_blob(desc.digest)
        if where[2] != desc.size:
            raise SourceError(f"{self.name}: blob {desc.digest[:19]} is {where[2]} bytes, "
                              f"its descriptor says {desc.size}")
        try:
            data = _read(where, limit)
        except OSError as e:
            raise SourceError(f"{self.name}: blob {desc.digest[:19]} cannot be read ({e.strerror or e})") from None
        check_digest(data, desc.digest, self.name)
        return data

    def read(self, desc: Descriptor, start: int = 0,
             count: Callable[[int], None] | None = None) -> Iterator[memoryview]:
        """A blob's bytes from offset ``start``, in pieces valid until the
        next one (not verified: the caller hashes what it consumes)."""
        path, offset, size = self.locate_blob(desc.digest)
        if size != desc.size:
            raise SourceError(f"{self.name}: blob {desc.digest[:19]} is {size} bytes, its descriptor says "
                              f"{desc.size} (the layout is truncated or damaged)")
        try:
            f = open(path, "rb", buffering=0)
        except OSError as e:
            raise SourceError(f"{self.name}: blob {desc.digest[:19]} cannot be read ({e.strerror})") from None
        with f:
            f.seek(offset + start)
            left = size - start
            buf = bytearray(min(READ_CHUNK, max(left, 1)))
            view = memoryview(buf)
            while left > 0:
                n = f.readinto(view[: min(len(buf), left)])
                if not n:
                    raise SourceError(f"{self.name}: blob {desc.digest[:19]} ends early (the layout is truncated)")
                left -= n
                if count is not None:
                    count(n)
                yield view[:n]


def check_digest(data: bytes, digest: str, name: str) -> None:
    """Raise SourceError unless ``data`` hashes to ``digest``."""
    alg, _, hex_ = digest.partition(":")
    if alg not in DIGEST_ALGORITHMS or hashlib.new(alg, data).hexdigest() != hex_:
        raise SourceError(f"{name}: blob {digest[:19]} does not match its digest")


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` parsed as a JSON object (a manifest, an index, a config);
    raises SourceError saying ``what`` is not one."""
    try:
        obj: Any = json.loads(data)
    except ValueError as e:
        obj = e
    if isinstance(obj, dict):
        return obj
    reason = f"not JSON ({obj})" if isinstance(obj, ValueError) else "not a JSON object"
    raise SourceError(f"{what} is {reason}")


def _read(where: tuple[Path, int, int], limit: int) -> bytes:
    path, offset, size = where
    if size > limit:
        raise OSError(f"{size} bytes, more than the {limit} a manifest or config may have")
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{path}: ends early")
    return data
