"""The images a calibration pulls (:mod:`modelimage.calibrate`, step 1):
each layer one file of weight-like bytes in a tar, written to an OCI
layout at disk speed; their push, what it puts in a registry, and their
deletion from it; the groups a calibration pushes, times and deletes
together (step 3)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelImageError
from .estimate import LayerSpec
from .oci import MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR

MiB = 2**20
DEFAULT_COMPRESSIONS: tuple[str, ...] = ("none", "gzip")
BLOCK = 16 * MiB
MEDIA = {"none": MEDIA_TYPE_LAYER_TAR, "gzip": MEDIA_TYPE_LAYER_GZIP}


@dataclass(frozen=True)
class ImageSpec:
    """A calibration image: ``size`` bytes of files in ``layers`` equal
    layers, stored with ``compression``."""

    size: int
    layers: int
    compression: str = "none"

    @property
    def name(self) -> str:
        """A tag part naming it, one per spec (sizes below or between MiB
        are named in bytes: 100 KiB and 900 KiB were both ``0mib`` and
        pushed to one tag, so one of the sizes was never pulled)."""
        size = f"{self.size // MiB}mib" if self.size % MiB == 0 else f"{self.size}b"
        return f"{size}-{self.layers}l-{self.compression}"


def image_specs(sizes: Sequence[int], layers: Sequence[int],
                compressions: Sequence[str] = DEFAULT_COMPRESSIONS) -> list[ImageSpec]:
    """Every size x layer count x compression, each once."""
    return list(dict.fromkeys(ImageSpec(s, n, c) for c in compressions for s in sizes for n in layers))


def _blocks(compression: str, seed: int) -> bytes:
    """A block of file content: random bytes (plain layers; nothing inside a
    blob dedupes, so a repeated block costs what fresh bytes cost) or fp16
    values ~ N(0, 0.02) like a trained layer (gzip saves ~7 %, as on real
    weights)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if compression == "none":
        return rng.integers(0, 2**63, size=BLOCK // 8, dtype=np.uint64).tobytes()
    return (rng.standard_normal(BLOCK // 2, dtype=np.float32) * 0.02).astype(np.float16).tobytes()


class _Blob:
    """Writes a layer blob: the tar bytes hashed (diffID), compressed or not,
    written and hashed again (digest)."""

    def __init__(self, path: Path, compression: str):
        self.f = open(path, "wb")
        self.diff, self.digest, self.size, self.gzip = hashlib.sha256(), hashlib.sha256(), 0, compression == "gzip"

    def write(self, tar_bytes: bytes, stored: bytes | None = None) -> None:
        """``stored``: these tar bytes already compressed (a gzip member)."""
        self.diff.update(tar_bytes)
        if stored is None:
            stored = gzip.compress(tar_bytes, 1, mtime=0) if self.gzip else tar_bytes
        self.digest.update(stored)
        self.size += len(stored)
        self.f.write(stored)

    def close(self) -> None:
        self.f.close()


def write_image(root: Path, spec: ImageSpec, *, tag: str, nonce: str) -> list[LayerSpec]:
    """An OCI layout at ``root`` holding ``spec`` under ``tag``; ``nonce``
    goes into every file name so no layer exists anywhere before. A gzip
    layer is a series of gzip members (one per block: valid gzip, which
    every engine decompresses as one stream), so it is written at disk
    speed. Returns the layers as the model sees them."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    block = _blocks(spec.compression, seed=hash(nonce) & 0xFFFF)
    member = gzip.compress(block, 6, mtime=0) if spec.compression == "gzip" else None
    layers, diff_ids, specs = [], [], []
    for i in range(spec.layers):
        size = spec.size // spec.layers
        info = tarfile.TarInfo(f"models/{nonce}-{i:03d}.bin")
        info.size, info.mode, info.mtime = size, 0o644, 0
        tmp = blobs / f".{i}.tmp"
        blob = _Blob(tmp, spec.compression)
        blob.write(info.tobuf(tarfile.PAX_FORMAT))
        for _ in range(size // BLOCK):
            blob.write(block, member)
        blob.write(block[: size % BLOCK])
        blob.write(b"\0" * (-size % 512 + 1024))  # padding, then the end-of-archive blocks
        blob.close()
        digest = blob.digest.hexdigest()
        tmp.rename(blobs / digest)
        tar_bytes = 512 * ((len(info.tobuf(tarfile.PAX_FORMAT)) + size + 511) // 512) + 1024
        layers.append({"mediaType": MEDIA[spec.compression], "digest": f"sha256:{digest}", "size": blob.size})
        diff_ids.append(f"sha256:{blob.diff.hexdigest()}")
        specs.append(LayerSpec(blob.size, tar_bytes, spec.compression))  # type: ignore[arg-type]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      **_put(blobs, config)},
                           "layers": layers}).encode()
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                **_put(blobs, manifest),
                                                "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return specs


def _put(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def layout_digests(layout: Path) -> tuple[str, list[str]]:
    """The manifest digest and the other blobs' digests (config, layers) of
    a layout :func:`write_image` wrote: what pushing it puts in a registry."""
    manifest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    blobs = sorted(f"sha256:{p.name}" for p in (layout / "blobs" / "sha256").iterdir() if not p.name.startswith("."))
    return manifest, [d for d in blobs if d != manifest]


def groups(specs: Sequence[ImageSpec], big: ImageSpec | None = None) -> list[list[ImageSpec]]:
    """``specs`` in the groups :func:`calibrate` pushes, times and deletes
    together: one per size and compression (its layer counts), in the
    order given, then ``big`` (the disk image) alone, last. Timed with
    every image pushed up front, the 1 GiB pulls ran 13-18 % slower than
    one group at a time (containerd, 2026-12-01, alternated A/B, medians:
    one layer 12.94 / 13.43 s against 11.09 / 11.74 s; a 1 GiB pull with
    5.8 GB of other images' blobs beside it in the registry ran 21-27 %
    slower than alone; docs/benchmarks.md, run 14): the fit was that
    much high for the checks and for a node, which pull one image at a
    time. The disk image after the others: written before them (3.6 GB),
    it left their 1 GiB pulls 7-10 % slower (runs 12 and 13)."""
    out: dict[tuple[int, str], list[ImageSpec]] = {}
    for spec in specs:
        if spec != big:
            out.setdefault((spec.size, spec.compression), []).append(spec)
    return [*out.values(), *([[big]] if big is not None else [])]


def drop_blobs(root: Path, digests: Sequence[str]) -> None:
    """Free the data of ``digests`` in a CNCF registry's filesystem storage
    under ``root`` (``docker/registry/v2/blobs/sha256/XX/HEX/data``): the
    API's deletes unlink them from the repository only, the bytes stay until
    a garbage collection, and a loopback registry's stale gigabytes slowed
    the next pulls on the same disk and page cache (:func:`groups`). Only for
    the registry :func:`loopback_registry` started, after the API deleted
    the images; missing files are fine."""
    for digest in digests:
        algorithm, hexa = digest.split(":", 1)
        shutil.rmtree(root / "docker" / "registry" / "v2" / "blobs" / algorithm / hexa[:2] / hexa,
                      ignore_errors=True)


def remove_image(ref: str, manifest: str, blobs: Sequence[str]) -> bool:
    """Delete what :func:`push_image` put at ``ref``: the manifest by
    digest (which untags it), then its blobs (each made for this run:
    every file name holds the run's nonce, so no other image shares them).
    True when the registry deleted all of it (or it was gone); False when
    it does not delete (deletes disabled, no permission) or cannot be
    reached."""
    import httpx

    from .registry.client import RegistryClient
    from .registry.reference import Reference, blob_path, manifest_path

    reference = Reference.parse(ref)
    repo = reference.repository
    try:
        client = RegistryClient(reference, timeout=30)  # may ask the registry already: inside the try
    except (httpx.HTTPError, ModelImageError):
        return False

    def delete(path: str) -> bool:  # distribution spec, "Deletes": 202; 404 is gone already; 405 is deletes off
        return client.http.delete(path).status_code in (200, 202, 404)

    try:
        if not delete(manifest_path(repo, manifest)):
            return False
        return all([delete(blob_path(repo, d)) for d in blobs])
    except (httpx.HTTPError, ModelImageError):
        return False
    finally:
        client.close()


def push_image(layout: Path, tag: str, ref: str) -> None:
    """Push the layout's ``tag`` to ``ref`` with modelimage's own push
    (credentials and TLS as for ``modelimage push``; loopback is plain HTTP)."""
    from .layout import LayoutRef
    from .registry.client import RegistryClient
    from .registry.push import RegistrySink, push_layout
    from .registry.reference import Reference

    reference = Reference.parse(ref)
    sink = RegistrySink(reference, RegistryClient(reference))
    try:
        push_layout(LayoutRef("oci", layout, tag), sink)
    finally:
        sink.close()
