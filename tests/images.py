"""Reading back what a build wrote, for comparing with the sources."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any


def read_image(layout: Path, tag: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes]]:
    """(manifest, config, {path in the image: bytes}) of ``layout:tag``."""
    index = json.loads((layout / "index.json").read_bytes())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)

    def blob(digest: str) -> bytes:
        return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    manifest = json.loads(blob(desc["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    files: dict[str, bytes] = {}
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=io.BytesIO(blob(layer["digest"]))) as t:
            for m in t.getmembers():
                if m.isfile():
                    files[m.name] = t.extractfile(m).read()  # type: ignore[union-attr]
    return manifest, config, files
