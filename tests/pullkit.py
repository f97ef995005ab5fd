"""Shared helpers for the pull tests: images pushed to the real registry,
hand-made OCI layouts of tar layers, a tree of a folder, and a cut
connection for resume tests."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from modelimage.oci import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    ImageConfig,
    Manifest,
)
from modelimage.registry import fetch
from modelimage.registry.client import RegistryClient
from modelimage.registry.reference import Reference


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the regular files under ``root``
    (symlinks as ``-> target``), without the puller's own record and
    staging folder (see :func:`own` for those)."""
    return {rel: what for rel, what in kinds(root).items() if what != "dir"}


def cut_after(monkeypatch, limit: int) -> list[int]:
    """The first time more than ``limit`` bytes have come through the
    reader's own GETs (ranged pieces, or the streaming GET of one
    connection; not the first piece, read while resolving), the connection
    breaks mid-answer."""
    real = fetch.BlobReader._open_range
    seen, cuts = [0], []

    class Cutting:
        def __init__(self, r):
            self.r = r

        def readinto(self, view):
            if not cuts and seen[0] + len(view) > limit:
                n = self.r.readinto(view[: limit - seen[0]]) if limit > seen[0] else 0
                seen[0] += n
                cuts.append(seen[0])
                raise ConnectionResetError("connection reset (injected)")
            n = self.r.readinto(view)
            seen[0] += n
            return n

        def __getattr__(self, name):
            return getattr(self.r, name)

    def open_range(self, conns, target, lo, hi):
        return Cutting(real(self, conns, target, lo, hi))

    monkeypatch.setattr(fetch.BlobReader, "_open_range", open_range)
    return cuts


def layer_size(ref: str, digest: str) -> int:
    r = Reference.parse(ref)
    client = RegistryClient(r)
    try:
        layers = client.get_manifest(r.repository, r.tag).json()["layers"]
    finally:
        client.close()
    (size,) = [d["size"] for d in layers if d["digest"] == digest]
    return size


def push_raw_artifact(registry, repo: str, files: dict[str, bytes]) -> str:
    """A hand-made artifact of raw file layers (title annotations), pushed
    with the registry client."""
    ref = Reference.parse(f"{registry.host}/{repo}:v1")
    client = RegistryClient(ref)
    layers = []
    for name, data in files.items():
        d = Descriptor.of_bytes("application/vnd.example.file.v1", data,
                                annotations={"org.opencontainers.image.title": name})
        client.put_blob(ref.repository, data, d.digest)
        layers.append(d)
    config = b"{}"
    cd = Descriptor.of_bytes("application/vnd.example.config.v1+json", config)
    client.put_blob(ref.repository, config, cd.digest)
    m = Manifest(cd, tuple(layers), artifact_type="application/vnd.example.model.v1")
    client.put_manifest(ref.repository, "v1", m.to_bytes(), MEDIA_TYPE_MANIFEST)
    client.close()
    return str(ref)


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type, i.linkname, i.mode = kind, link, mode
    return i


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything under ``root``, the puller's own entries included: folders
    (mode, mtime), files (bytes' sha256, mode, mtime), symlinks (target)."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        st = p.lstat()
        if p.is_symlink():
            out[rel] = ("symlink", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
        else:
            out[rel] = ("file", sha(p.read_bytes()), st.st_mode, st.st_mtime_ns)
    return out


def kinds(root: Path) -> dict[str, str]:
    """Paths, types, bytes and link targets under ``root`` (folders as
    ``dir``), without the puller's own entries: what umoci's rootfs is
    compared by."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.split("/", 1)[0] in (".modelimage-pull", ".modelimage-pull.json"):
            continue
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = sha(p.read_bytes())
    return out


def own(root: Path) -> set[str]:
    """The puller's own entries at DEST's root (record, staging folder)."""
    return {p.name for p in root.iterdir() if p.name.startswith(".modelimage-pull")} if root.is_dir() else set()


def push_layers(registry, repo: str, layers: list[bytes]) -> str:
    """An image of these tar layers (no labels: a foreign image) pushed as ``REPO:v1``."""
    ref = Reference.parse(f"{registry.host}/{repo}:v1")
    client = RegistryClient(ref)
    for data in layers:
        client.put_blob(ref.repository, data, sha(data))
    config = ImageConfig("amd64", "linux", tuple(sha(d) for d in layers), "1970-01-01T00:00:00Z").to_bytes()
    client.put_blob(ref.repository, config, sha(config))
    manifest = Manifest(Descriptor(MEDIA_TYPE_CONFIG, sha(config), len(config)),
                        tuple(Descriptor(MEDIA_TYPE_LAYER_TAR, sha(d), len(d)) for d in layers))
    client.put_manifest(ref.repository, "v1", manifest.to_bytes(), MEDIA_TYPE_MANIFEST)
    client.close()
    return str(ref)


def layout(root: Path, layers: list[bytes]) -> str:
    """An OCI layout with these tar layers (no labels: a foreign image)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descs = []
    for data in layers:
        (blobs / sha(data)[7:]).write_bytes(data)
        descs.append(Descriptor(MEDIA_TYPE_LAYER_TAR, sha(data), len(data)))
    config = ImageConfig("amd64", "linux", tuple(d.digest for d in descs), "1970-01-01T00:00:00Z").to_bytes()
    (blobs / sha(config)[7:]).write_bytes(config)
    manifest = Manifest(Descriptor(MEDIA_TYPE_CONFIG, sha(config), len(config)), tuple(descs)).to_bytes()
    (blobs / sha(manifest)[7:]).write_bytes(manifest)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": MEDIA_TYPE_MANIFEST, "digest": sha(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
    return f"oci:{root}:v1"
