"""An image in a registry, opened for signing and checking signatures only.

Resolves a reference to one image manifest and reads its config with
:func:`modelimage.image.open_image` (the one reader: an index picks the
platform, the manifest signed is the one whose digest and size were
checked), lists its referrers and reads their small blobs. It never reads a model layer: the
:class:`~modelimage.image.Image` it hands out refuses to, and reads only
the file-list layer of an image with too many files for its manifest to
list them (:mod:`modelimage.filelist`; a few MB for 20,000 files, never a
weight). Every response
body received (manifests, config, referrers list, bundles, token answers)
is counted in :attr:`Remote.bytes_fetched`, so ``verify`` can say what it
cost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import httpx

from ..errors import ModelImageError, SourceError
from ..filelist import ANNOTATION_FILELIST, MAX_LIST_BYTES
from ..image import Image, json_blob, open_image
from ..oci import Descriptor
from ..registry.client import RegistryClient
from ..registry.keychain import Credentials
from ..registry.mirror import Opened, open_client
from ..registry.reference import Reference
from ..registry.referrers import list_referrers
from ..registry.transport import RegistryError, network_message
from .referrer import Referrer, classify

MAX_SMALL_BLOB = 4 << 20  # bundles and statements are KBs; anything bigger is not one


@dataclass
class Remote:
    """An opened image: ``subject`` is its manifest's descriptor (what
    referrers point at); ``image`` has the manifest and config only."""

    ref: Reference
    client: RegistryClient
    image: Image
    subject: Descriptor
    responses: list[httpx.Response] = field(default_factory=list)
    from_index: bool = False  # the reference named an index; ``image`` is the entry chosen for the platform
    served: Reference | None = None  # where it is read from (a mirror's reference), when not ``ref``
    layers_read: list[Descriptor] = field(default_factory=list)  # only ever the file-list layer

    @property
    def repository(self) -> str:
        """The repository the client reads (a mirror's path may have a prefix)."""
        return (self.served or self.ref).repository

    @property
    def bytes_fetched(self) -> int:
        """Response body bytes received so far (as sent: before any decoding)."""
        return sum(r.num_bytes_downloaded for r in self.responses)

    @property
    def requests(self) -> int:
        return len(self.responses)

    @property
    def pinned(self) -> str:
        """``HOST/REPO@sha256:...`` of the image manifest."""
        return f"{self.ref.host}/{self.ref.repository}@{self.subject.digest}"

    def referrers(self) -> list[Referrer]:
        entries, _ = list_referrers(self.client, self.repository, self.subject.digest)
        return [classify(d) for d in entries]

    def manifest(self, digest: str) -> dict:
        m = self.client.get_manifest(self.repository, digest)
        return json_blob(m.data, digest, f"{self.ref.host}/{self.ref.repository}@{digest[:19]}")

    def small_blob(self, desc: Descriptor) -> bytes:
        """A small blob (bundle, statement), checked against its digest."""
        what = f"{self.ref.host}/{self.ref.repository}: blob {desc.digest[:19]}"
        if desc.size > MAX_SMALL_BLOB:
            raise SourceError(f"{what}: {desc.size} bytes is too big for a signature or an attestation")
        data = self.client.get_blob(self.repository, desc.digest)
        if "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
            raise SourceError(f"{what}: does not match its digest")
        return data

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _list_layer_only(client: RegistryClient, repo: str, read: list[Descriptor]
                     ) -> Callable[[Descriptor, int], Iterator[memoryview]]:
    """The blob reader of an opened image: the file-list layer (the small
    layer that lists every layer's files when the manifest could not hold
    the lists, :mod:`modelimage.filelist`) and nothing else. ``read``
    collects what was read, so ``verify`` can say it."""

    def reader(desc: Descriptor, start: int) -> Iterator[memoryview]:
        if start or not desc.annotations.get(ANNOTATION_FILELIST) or desc.size > MAX_LIST_BYTES:
            raise AssertionError(f"signing and signature checks never read model layers ({desc.digest[:19]})")
        read.append(desc)
        yield memoryview(client.get_blob(repo, desc.digest))

    return reader


def open_remote(source: str, *, platform: str | None = None, insecure: frozenset[str] = frozenset(),
                credentials: Credentials | None = None, mirrors: bool = False) -> Remote:
    """Open ``source`` (``HOST/REPO[:TAG|@DIGEST]``): its manifest and config.
    ``mirrors``: read through the host's configured mirrors
    (:mod:`modelimage.registry.mirror`; for checks and listings, never for
    signing, which writes). Raises
    :class:`~modelimage.errors.ModelImageError` subclasses, one line."""
    if source.startswith(("oci:", "oci-archive:")):
        raise SourceError(f"{source}: signatures live in a registry next to the image; push it first "
                          "(modelimage push) and sign the pushed reference")
    ref = Reference.parse(source)
    opened = open_client(ref, insecure=insecure, credentials=credentials) if mirrors else \
        Opened(RegistryClient(ref, insecure=insecure, credentials=credentials), ref, ref)
    client, read = opened.client, opened.served
    responses: list[httpx.Response] = []
    for c in (client.http, client.transport.token_client):
        c.event_hooks = {**c.event_hooks, "response": [*c.event_hooks.get("response", []), responses.append]}
    try:
        image = open_image(source, platform=platform, opened=opened)  # closes the client when it fails
    except httpx.HTTPError as e:
        client.close()
        raise ModelImageError(network_message(f"{read.host}", e)) from None
    layers_read: list[Descriptor] = []
    image = replace(image, read=_list_layer_only(client, read.repository, layers_read), read_range=None)
    return Remote(ref, client, image, image.descriptor, responses, image.from_index, read if read != ref else None,
                  layers_read)


__all__ = ["Remote", "open_remote", "RegistryError"]
