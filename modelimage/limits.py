"""What each registry accepts, with where we learned it, and the preflight
that checks a plan against it before a single byte is uploaded.

Numbers come from ../shared/REFERENCES.md; each entry cites its source.
Hosts not in the table get the limits every registry shares (4 MiB
manifests, 125 layers). ``[registries."HOST"]`` in modelimage.toml
overrides any field (Harbor, Quay and self-hosted registries are configured
per installation).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import ConfigError, LayerTooLarge, PlanError
from .oci import ANNOTATION_TITLE
from .units import format_seconds, format_size, parse_size

MIB, GIB = 2**20, 2**30
# opencontainers/distribution-spec PR 293: registries SHOULD accept >= 4 MB
# manifests and answer 413 above their limit; distribution v3 enforces 4 MB
# on GET only, so a bigger manifest pushes and then cannot be pulled (#4636).
MANIFEST_LIMIT = 4 * MIB
# moby layer/layer_store.go maxLayerDepth = 125; CRI-O fails above 128.
LAYER_DEPTH_LIMIT = 125


@dataclass(frozen=True)
class RegistryLimits:
    name: str
    max_layer_size: int | None = None
    max_manifest_size: int = MANIFEST_LIMIT
    max_layers: int = LAYER_DEPTH_LIMIT
    upload_timeout: float | None = None  # seconds one blob upload may take
    chunked_uploads: bool = True  # False: only monolithic PUTs work
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


KNOWN: tuple[tuple[tuple[str, ...], RegistryLimits], ...] = (
    (("ghcr.io",), RegistryLimits(
        "GitHub Container Registry", max_layer_size=10 * 10**9, upload_timeout=600,
        source="docs.github.com, Working with the Container registry, troubleshooting: 10 GB per layer, "
               "10-minute upload timeout; chunk PATCHes over 4 MiB refused (oras-project/rust-oci-client #35, "
               "#37): uploads halve their chunks after a 413")),
    (("*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn", "*.dkr.ecr-fips.*.amazonaws.com"), RegistryLimits(
        "Amazon ECR", max_layer_size=52_000 * MIB,
        source="AWS ECR service quotas: 52,000 MiB maximum layer size (not adjustable); answers 201 (not 202) "
               "to a chunk PATCH (kitops #821), accepted as success")),
    (("public.ecr.aws",), RegistryLimits(
        "Amazon ECR Public", max_layer_size=10_000 * MIB,
        source="AWS ECR Public service quotas: 10,000 MiB maximum layer size")),
    (("*.azurecr.io", "*.azurecr.cn", "*.azurecr.us"), RegistryLimits(
        "Azure Container Registry", max_layer_size=200 * GIB, max_manifest_size=4 * MIB,
        source="learn.microsoft.com container-registry-skus: 200 GiB layers, 4 MiB manifests (all tiers)")),
    (("*-docker.pkg.dev", "gcr.io", "*.gcr.io"), RegistryLimits(
        "Google Artifact Registry", chunked_uploads=False,
        source="jozu-ai/kitops PR 777 (issue 777, PR 780), containers/skopeo #1101: chunked (PATCH) uploads "
               "rejected, >100 MB layers failed; monolithic uploads only (elsewhere a PATCH answered 405/415/501 "
               "or UNSUPPORTED switches to one PUT per blob)")),
    (("docker.io", "registry-1.docker.io", "index.docker.io"), RegistryLimits(
        "Docker Hub", max_layer_size=10 * 10**9,
        source="no documented per-layer limit (UNVERIFIED): a conservative 10 GB default; "
               "override in modelimage.toml [registries.\"docker.io\"]")),
    (("quay.io",), RegistryLimits(
        "Quay.io", max_layer_size=10 * 10**9,
        source="limits are configurable per installation (UNVERIFIED for quay.io): a conservative 10 GB default; "
               "override in modelimage.toml")),
)
DEFAULT = RegistryLimits(
    "registry", source="OCI distribution spec (4 MiB manifests) and docker's 125-layer depth; "
                       "add [registries.\"HOST\"] to modelimage.toml for per-installation limits (Harbor, Quay)")
# Quirks any registry may show, handled by registry/upload.py as they appear (not limits):
# 413 on big bodies behind nginx or Cloudflare (cloudflare/serverless-registry #42, #67; ttl.sh #104),
# an S3 backend refusing single PUTs over 5 GB (distribution #886), OCI-Chunk-Min-Length
# (distribution-spec 1.1), Range 0-0 meaning no bytes (distribution #2363).

_OVERRIDE_KEYS = {"name", "max_layer_size", "max_manifest_size", "max_layers", "upload_timeout", "chunked_uploads"}
_TRANSPORT_KEYS = {"mirrors", "insecure"}  # of the same tables, but how to reach the host (registry.mirror)


def _host_only(host: str) -> str:
    return host.lower().split("/", 1)[0]


def limits_for(host: str, overrides: dict[str, dict[str, Any]] | None = None) -> RegistryLimits:
    """The limits of ``host`` (``ghcr.io``, ``123.dkr.ecr.us-east-1.amazonaws.com``...)."""
    h = _host_only(host)
    name = h.split(":", 1)[0]
    limits = next((lim for patterns, lim in KNOWN if any(fnmatch.fnmatchcase(name, p) for p in patterns)),
                  replace(DEFAULT, name=h))
    for key in (h, name):
        if overrides and key in overrides:
            return apply_override(limits, overrides[key], where=f'[registries."{key}"]')
    return limits


def apply_override(limits: RegistryLimits, table: dict[str, Any], *, where: str) -> RegistryLimits:
    unknown = set(table) - _OVERRIDE_KEYS - _TRANSPORT_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(_OVERRIDE_KEYS | _TRANSPORT_KEYS))})")
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key in _TRANSPORT_KEYS:
            continue
        if key in ("max_layer_size", "max_manifest_size"):
            changes[key] = parse_size(value, what=f"{where} {key}")
        elif key in ("max_layers",) and isinstance(value, int) and value > 0:
            changes[key] = value
        elif key == "upload_timeout" and isinstance(value, (int, float)) and value > 0:
            changes[key] = float(value)
        elif key == "chunked_uploads" and isinstance(value, bool):
            changes[key] = value
        elif key == "name" and isinstance(value, str):
            changes[key] = value
        else:
            raise ConfigError(f"{where}: {key} = {value!r} is not valid")
    if not changes:  # a table of mirrors or insecure alone leaves the limits as they are
        return limits
    return replace(limits, **changes, source=f"{limits.source}; overridden by {where}")


@dataclass(frozen=True)
class LayerFacts:
    """What the preflight needs to know of each planned layer."""

    title: str
    size: int  # bytes as stored (an upper bound for compressed layers)


def layer_facts(manifest: dict[str, Any]) -> list[LayerFacts]:
    """The layers of a built image manifest (parsed JSON), for :func:`check`:
    each titled by its ``org.opencontainers.image.title`` or its digest."""
    return [LayerFacts((d.get("annotations") or {}).get(ANNOTATION_TITLE, d["digest"][:19]),
                       int(d["size"])) for d in manifest.get("layers", [])]


def check(host: str, limits: RegistryLimits, layers: Sequence[LayerFacts], *, manifest_size: int,
          base_layers: int = 0, upload_bps: float | None = None) -> list[str]:
    """Raise when ``host`` would reject the image; return warnings."""
    label = f"{host} ({limits.name})" if limits.name not in (host, "registry") else host
    if limits.max_layer_size is not None:
        for i, layer in enumerate(layers, 1):
            if layer.size > limits.max_layer_size:
                raise LayerTooLarge(
                    f"layer {i} ({layer.title}) is {format_size(layer.size)}; {label} accepts at most "
                    f"{format_size(limits.max_layer_size)} per layer; rerun with --max-layer-size "
                    f"{_round_down(limits.max_layer_size)}"
                )
    total = len(layers) + base_layers
    if total > limits.max_layers:
        raise PlanError(
            f"the image has {total} layers" + (f" ({base_layers} from the base)" if base_layers else "")
            + f"; {label} and the engines that pull from it accept at most {limits.max_layers}; "
            "rerun with a larger --max-layer-size"
        )
    if manifest_size > limits.max_manifest_size:
        raise PlanError(
            f"the manifest would be {format_size(manifest_size)}; {label} accepts at most "
            f"{format_size(limits.max_manifest_size)}; each layer adds a descriptor (file lists past "
            "512 KiB already go to a layer of their own): fewer layers make it smaller, rerun with a larger "
            "--max-layer-size"
        )
    warnings = []
    if limits.upload_timeout and upload_bps:
        for i, layer in enumerate(layers, 1):
            seconds = layer.size / upload_bps
            if seconds > limits.upload_timeout:
                warnings.append(
                    f"layer {i} ({layer.title}) takes ~{format_seconds(seconds)} to upload at "
                    f"{format_size(upload_bps)}/s; {label} cuts uploads after "
                    f"{format_seconds(limits.upload_timeout)}: use a smaller --max-layer-size "
                    f"(at most {_round_down(int(upload_bps * limits.upload_timeout * 0.8))})"
                )
    return warnings


def _round_down(n: int) -> str:
    """A round --max-layer-size at most ``n`` bytes."""
    for unit, div in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= div:
            return f"{n // div}{unit}"
    return str(n)
