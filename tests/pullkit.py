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

from hypothesis import strategies as st

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


def readable(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of what reads as a file under ``root``:
    regular files, and symlinks that lead to one without leaving ``root``
    (what a loader opening DEST/PATH reads), without the puller's own
    entries. What ``inspect REF`` must report for the same image."""
    top = os.path.realpath(root)
    out = {}
    for folder, dirs, names in os.walk(top):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            p = os.path.join(folder, name)
            rel = os.path.relpath(p, top).replace(os.sep, "/")
            if rel.split("/", 1)[0] in (".modelimage-pull", ".modelimage-pull.json"):
                continue
            real = os.path.realpath(p)
            if real.startswith(top + os.sep) and os.path.isfile(real):
                out[rel] = sha(Path(real).read_bytes())
    return out


def inspected(source: str) -> dict[str, str]:
    """``{path: sha256}`` of the files ``inspect REF`` reports (read by range)."""
    from modelimage.errors import SourceError
    from modelimage.image import open_image
    from modelimage.registry.pieces import FetchStats
    from modelimage.sources.image import ImageFolder

    stats = FetchStats()
    image = open_image(source, stats=stats)
    try:
        listed = ImageFolder(image, stats).list_files()
    except SourceError as e:
        assert "no files" in str(e)
        return {}
    finally:
        image.close()
    return {f.name: sha(f.path.read_bytes()) for f in listed}


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


# ---------------------------------------------------------------- tar layers by hand, and generated

R, D, S, L = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def t(*members: tuple) -> bytes:
    """A tar layer of (name, data) or (name, type, linkname[, data]) members."""
    out = []
    for m in members:
        if len(m) == 2:
            out.append((info(m[0]), m[1]))
        else:
            out.append((info(m[0], m[1], m[2]), m[3] if len(m) > 3 else b""))
    return tar_of(out)


NAMES = ("a", "b", "c")


@st.composite
def images(draw) -> list[list[tuple]]:
    """Layers (lists of tar members) that add, replace, white out and
    opaque-clear files, folders, symlinks and hard links, each valid on top
    of the layers before it (nothing written below a file or symlink)."""
    state: dict[str, tuple] = {}  # path -> ("file", data) | ("dir",) | ("sym", target)
    layers = []

    def below(p: str) -> list[str]:
        return [k for k in state if k.startswith(p + "/")]

    for _ in range(draw(st.integers(1, 4))):
        members: list[tuple] = []
        existing = sorted(state)
        if existing and draw(st.booleans()):
            for p in draw(st.lists(st.sampled_from(existing), max_size=2, unique=True)):
                if p in state:
                    parent, base = os.path.split(p)
                    members.append((os.path.join(parent, ".wh." + base), b""))
                    for k in below(p) + [p]:
                        state.pop(k, None)
        dirs = sorted(k for k, v in state.items() if v[0] == "dir")
        if draw(st.integers(0, 4)) == 0:
            members.append((".wh..wh..opq", b""))
            state.clear()
        elif dirs and draw(st.booleans()):
            d = draw(st.sampled_from(dirs))
            members.append((f"{d}/.wh..wh..opq", b""))
            for k in below(d):
                state.pop(k)
        for _ in range(draw(st.integers(1, 5))):
            depth = draw(st.integers(1, 3))
            p = "/".join(draw(st.lists(st.sampled_from(NAMES), min_size=depth, max_size=depth)))
            parts = p.split("/")
            ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
            if any(a in state and state[a][0] != "dir" for a in ancestors):
                continue  # never below a file or a symlink
            kind = draw(st.sampled_from(["file", "file", "dir", "sym", "link"]))
            if draw(st.booleans()):
                for a in ancestors:
                    if a not in state:
                        members.append((a + "/", D, ""))
            for a in ancestors:
                state[a] = ("dir",)
            if state.get(p, ("",))[0] == "dir" and kind != "dir":
                for k in below(p):
                    state.pop(k)
            files = sorted(k for k, v in state.items() if v[0] == "file" and k != p)
            if kind == "link" and not files:
                kind = "file"
            if kind == "file":
                data = draw(st.binary(max_size=40))
                members.append((p, data))
                state[p] = ("file", data)
            elif kind == "dir":
                members.append((p + "/", D, ""))
                state[p] = ("dir",)
            elif kind == "sym":
                target = draw(st.sampled_from(NAMES))
                members.append((p, S, target))
                state[p] = ("sym", target)
            else:
                target = draw(st.sampled_from(files))
                members.append((p, L, target))
                state[p] = state[target]
        layers.append(members)
    return layers
