"""Base images: a model image on top of a serving image.

The result is the base's layers followed by the model's, with the base's
config kept (entrypoint, env, user, working dir), its labels merged with the
model's, and its history extended. A base comes from a registry
(``host/repo:tag``) or, offline, from an OCI layout (``oci:DIR[:TAG]``),
read with :func:`modelimage.image.open_image`. Its blobs reach the
destination without a local copy: mounted when pushing to the registry that
holds them, otherwise streamed through (and verified) by the sink.
"""

from __future__ import annotations

from .image import Image, open_image

BaseImage = Image


def load_base(text: str, platform: str, *, insecure: frozenset[str] = frozenset()) -> BaseImage:
    """Read a base image's manifest and config (never its layers)."""
    return open_image(text, platform=platform, insecure=insecure)
