"""A model on top of a base image (``build --base``): go-containerregistry's
``v1/mutate.Append`` for the one case modelimage has.

The result is the base's layers followed by the model's. The base's config
is kept as it is (entrypoint, env, user, working dir and every field
modelimage does not know), with the model's labels merged into its
``config.Labels``, its ``rootfs.diff_ids`` and ``history`` extended, and the
build's ``created``. The base comes from a registry (``HOST/REPO[:TAG]``) or
offline from a layout (``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``), read
with :func:`modelimage.image.open_image`; its blobs reach the destination
without a local copy: mounted when pushing to the registry that holds them,
otherwise streamed through (and verified) by the sink.

The result is always an OCI image manifest. A Docker schema 2 base (``podman
push --format v2s2``) therefore has its layers named by their OCI media
types: the same bytes under the image spec's names ("Compatibility Matrix"
in media-types.md), so that the manifest is OCI throughout. A manifest that
mixes the two is valid JSON that ``skopeo copy`` cannot convert to
``docker-archive:`` ("Unknown media type during manifest conversion").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import ConfigError
from .image import Image, open_image
from .oci import (
    DOCKER_TO_OCI,
    IMAGE_LAYER_TYPES,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_DOCKER_CONFIG,
    Descriptor,
    Platform,
)

IMAGE_CONFIG_TYPES = frozenset({MEDIA_TYPE_CONFIG, MEDIA_TYPE_DOCKER_CONFIG})


def load_base(text: str, platform: str | Platform | None, *, insecure: frozenset[str] = frozenset(),
              strict: bool = False) -> Image:
    """Read a base image's manifest and config (never its layers) and check
    that it is a container image a model can go on top of; from an index,
    the image of ``platform``. With ``strict`` (a platform the user asked
    for), a single-platform base must be of that platform: the result runs
    where its base runs. Raises :class:`~modelimage.errors.SourceError`
    (cannot be read) or :class:`ConfigError` (an artifact, not an image; the
    wrong platform)."""
    base = open_image(text, platform=platform, insecure=insecure)
    try:
        base_layers(base)
        want = Platform.parse(platform) if isinstance(platform, str) else platform
        if strict and want is not None and not base.platform.satisfies(want):
            raise ConfigError(f"--base {text} is a {base.platform} image, not {want}: the model would run "
                              f"where its base runs; choose a {want} base, or drop --platform")
    except BaseException:
        base.close()
        raise
    return base


def base_layers(base: Image) -> tuple[Descriptor, ...]:
    """The base's layer descriptors as an OCI manifest lists them: Docker
    media types given their OCI names, digests, sizes, annotations and
    ``urls`` kept. Raises :class:`ConfigError` when the base is not a
    container image (a config or layer of another media type)."""
    config_type = (base.manifest.get("config") or {}).get("mediaType", MEDIA_TYPE_CONFIG)
    if config_type not in IMAGE_CONFIG_TYPES:
        raise ConfigError(f"--base {base.name}: its config is {config_type}, not a container image's; "
                          "a base must be a runnable image (build artifacts without --base)")
    out = []
    for d in base.layers:
        media_type = DOCKER_TO_OCI.get(d.media_type, d.media_type)
        if media_type not in IMAGE_LAYER_TYPES:
            raise ConfigError(f"--base {base.name}: layer {d.digest[:19]} is {d.media_type}, not an image layer; "
                              "a base must be a runnable image")
        out.append(Descriptor(media_type, d.digest, d.size, dict(d.annotations), urls=d.urls))
    return tuple(out)


def append_config(base: Image, *, labels: dict[str, str], history: Sequence[dict[str, Any]],
                  diff_ids: Sequence[str], created: str) -> dict[str, Any]:
    """The base's config (a JSON object) with the model appended: labels
    merged into ``config.Labels`` (the model's win), ``diff_ids`` and
    ``history`` appended, ``created`` set. Every other field is kept."""
    config = dict(base.config)
    config.setdefault("os", "linux")
    config.setdefault("architecture", "amd64")
    container = dict(config.get("config") or {})
    container["Labels"] = {**(container.get("Labels") or {}), **labels}
    config["config"] = container
    rootfs = dict(config.get("rootfs") or {})
    rootfs["type"] = "layers"
    rootfs["diff_ids"] = list(rootfs.get("diff_ids") or []) + list(diff_ids)
    config["rootfs"] = rootfs
    config["history"] = _base_history(config, len(rootfs["diff_ids"]) - len(diff_ids)) + list(history)
    config["created"] = created
    return config


def _base_history(config: dict[str, Any], n_layers: int) -> list[Any]:
    """The base's history, with an entry added for each of its ``n_layers``
    layers it does not describe (history is optional in the image spec), as
    BuildKit's exporter does (``normalizeLayersAndHistory``): then the
    history's entries that make layers line up with the layers, and the
    ``modelimage build`` entries name the model's (``pull`` and ``inspect``
    use that when a copy dropped the layer annotations)."""
    history = list(config.get("history") or [])
    described = sum(1 for h in history if not (isinstance(h, dict) and h.get("empty_layer")))
    created = config.get("created") or "1970-01-01T00:00:00Z"
    return history + [{"created": created, "created_by": "base image layer (its history did not describe it)"}
                      for _ in range(max(0, n_layers - described))]


# image-spec annotations.md: the image this one is based on
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"


def base_annotations(base: Image) -> dict[str, str]:
    """``org.opencontainers.image.base.digest`` (the base's manifest digest:
    the one platform's image used) and ``.base.name`` (its reference as given)."""
    return {ANNOTATION_BASE_DIGEST: base.digest, ANNOTATION_BASE_NAME: base.name}
