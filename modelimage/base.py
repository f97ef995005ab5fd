"""Base images: a model image on top of a serving image.

The result is the base's layers followed by the model's, with the base's
config kept (entrypoint, env, user, working dir), its labels merged with the
model's, and its history extended. A base comes from a registry
(``host/repo:tag``) or, offline, from an OCI layout (``oci:DIR[:TAG]``).
Its blobs reach the destination without a local copy: mounted when pushing
to the registry that holds them, otherwise streamed through.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, SourceError
from .layout import LayoutRef, read_layout
from .oci import MEDIA_TYPE_INDEX, Descriptor

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


@dataclass(frozen=True)
class BaseImage:
    name: str  # as the user wrote it
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: tuple[Descriptor, ...]
    fetch: Callable[[Descriptor], Iterator[bytes]] = field(repr=False)
    host: str | None = None  # registry host and repository, for cross-repository mounts
    repository: str | None = None

    @property
    def platform(self) -> str:
        c = self.config
        return "/".join(p for p in (c.get("os", "linux"), c.get("architecture", "amd64"), c.get("variant")) if p)


def _pick(index: dict[str, Any], platform: str, name: str) -> dict[str, Any]:
    os_, arch, *variant = platform.split("/")
    for m in index.get("manifests", []):
        p = m.get("platform") or {}
        if p.get("os") == os_ and p.get("architecture") == arch and (not variant or p.get("variant") == variant[0]):
            return m
    have = ", ".join("/".join(filter(None, (p.get("os"), p.get("architecture"), p.get("variant"))))
                     for p in (m.get("platform") or {} for m in index.get("manifests", [])))
    raise SourceError(f"{name}: no {platform} image in the index (it has: {have or 'none'})")


def _verified(chunks: Iterator[bytes], desc: Descriptor, name: str) -> Iterator[bytes]:
    h, n = hashlib.sha256(), 0
    for c in chunks:
        h.update(c)
        n += len(c)
        yield c
    if "sha256:" + h.hexdigest() != desc.digest or n != desc.size:
        raise SourceError(f"{name}: blob {desc.digest[:19]} does not match its digest")


def load_base(text: str, platform: str, *, insecure: frozenset[str] = frozenset()) -> BaseImage:
    """Read a base image's manifest and config (never its layers)."""
    if text.startswith("oci:"):
        return _from_layout(text, platform)
    return _from_registry(text, platform, insecure)


def _from_layout(text: str, platform: str) -> BaseImage:
    ref = LayoutRef.parse(text)
    desc, manifest = read_layout(ref)
    blobs = ref.path / "blobs" / "sha256"

    def read(digest: str) -> bytes:
        try:
            return (blobs / digest.split(":", 1)[1]).read_bytes()
        except OSError as e:
            raise SourceError(f"{text}: blob {digest[:19]} is missing ({e.strerror})") from None

    if manifest.get("mediaType") in (MEDIA_TYPE_INDEX, DOCKER_LIST) or "manifests" in manifest:
        manifest = json.loads(read(_pick(manifest, platform, text)["digest"]))
    config = json.loads(read(manifest["config"]["digest"]))

    def fetch(d: Descriptor) -> Iterator[bytes]:
        path = blobs / d.hex
        with open(path, "rb") as f:
            yield from _verified(iter(lambda: f.read(4 << 20), b""), d, text)

    return BaseImage(text, manifest, config, tuple(Descriptor.from_json(x) for x in manifest.get("layers", [])), fetch)


def _from_registry(text: str, platform: str, insecure: frozenset[str]) -> BaseImage:
    from .registry.client import RegistryClient
    from .registry.reference import Reference

    ref = Reference.parse(text)
    client = RegistryClient(ref, insecure=insecure)
    m = client.get_manifest(ref.repository, ref.ref)
    manifest = m.json()
    if m.media_type in (MEDIA_TYPE_INDEX, DOCKER_LIST) or "manifests" in manifest:
        manifest = client.get_manifest(ref.repository, _pick(manifest, platform, text)["digest"]).json()
    if "config" not in manifest:
        raise ConfigError(f"{text}: not an image manifest")
    config = json.loads(client.get_blob(ref.repository, manifest["config"]["digest"]))

    def fetch(d: Descriptor) -> Iterator[bytes]:
        r = client.stream_blob(ref.repository, d.digest)
        try:
            yield from _verified(r.iter_bytes(4 << 20), d, text)
        finally:
            r.close()

    return BaseImage(text, manifest, config, tuple(Descriptor.from_json(x) for x in manifest.get("layers", [])),
                     fetch, ref.host, ref.repository)


def layout_path(text: str) -> Path | None:
    return LayoutRef.parse(text).path if text.startswith("oci:") else None
