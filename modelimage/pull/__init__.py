"""Model files out of an image or model artifact, onto a disk: ``modelimage
pull`` and ``modelimage verify``.

What it reads: images modelimage builds (uncompressed tar layers that list
their files in ``dev.modelimage.files``), ModelPack and Docker Model Runner
artifacts (raw layers whose blob IS one file, named by
``org.cncf.model.filepath`` or ``org.opencontainers.image.title``; tar layers
such as Docker's ``vnd.docker.ai.vllm.config.tar``), and any image other
tools built (gzip, zstd or plain tar layers, whiteouts, a model on a base),
from a registry or an OCI layout (``oci:DIR[:TAG]``).

Where files land: for modelimage's images, the recorded target
(``dev.modelimage.target``, e.g. ``/models/llama``) becomes DEST; other
images' whole root filesystem does; ``path`` picks another subtree; a raw
layer lands at ``DEST/<filepath>``. In a modelimage image on a base, layers
that list no files are the base's and are not fetched (unless ``path`` is
given).

How: blobs are fetched several at a time (``concurrency``), big ones over
several connections with ranged GETs (:mod:`modelimage.registry.fetch`);
each blob's sha256 is checked as it streams; tar layers are extracted as
their bytes arrive (:mod:`.extract`: staged inside DEST, renamed in
once the digest matched; nothing outside DEST, ever). Layers that list their
files and do not overlap go in parallel; as soon as a layer's content is
unknown (it lists no files: it may overwrite or white out what lies below),
it is applied alone, in manifest order.

Resuming: DEST/.modelimage-pull/ holds the puller's state (``state.json``:
the manifest pulled, the selection, layers applied in order, and each file
written with its size, sha256 and stat signature) and a ``partial/`` folder
(staged files; a raw blob cut mid-way is kept as ``<digest>.partial`` and
continued with a ``Range`` request after its prefix is hashed again; a
plain tar layer that lists its files, cut mid-way, keeps its staged files
and a ``<digest>.tarjournal`` of the header bytes between them, so it too is
hashed again from disk and continued with a ``Range`` request). A
second run skips files whose signature still matches what was recorded, or,
without a record, whose sha256 matches the layer's file list; layers of
unknown content are skipped when every layer before them was and nothing they
wrote has changed since. Delete the folder to start afresh; ``verify``
ignores it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from ..errors import BadLayer, PullError, UnsafeLayer, VerifyFailed
from ..registry.fetch import DEFAULT_RETRIES
from ..registry.keychain import Credentials
from .job import DEFAULT_CONCURRENCY, PullJob, prepare_pull
from .result import PulledFile, PullResult, VerifyResult
from .tree import verify

__all__ = ["DEFAULT_CONCURRENCY", "BadLayer", "PullError", "PullJob", "PullResult", "PulledFile", "UnsafeLayer",
           "VerifyFailed", "VerifyResult", "prepare_pull", "pull", "verify"]


def pull(source: str, dest: str | os.PathLike, *, include: Sequence[str] = (), path: str | None = None,
         platform: str | None = None, concurrency: int = DEFAULT_CONCURRENCY, connections: int | None = None,
         retries: int = DEFAULT_RETRIES, insecure: frozenset[str] | set[str] = frozenset(),
         credentials: Credentials | None = None, progress: Callable[[int], None] | None = None) -> PullResult:
    """Put the files of ``source`` (``HOST/REPO[:TAG|@DIGEST]`` or
    ``oci:DIR[:TAG]``) into ``dest`` (created if missing); see the module docstring.

    ``include``: globs (``*.gguf``, ``config.json``, ``tokenizer*``; without
    ``/`` they match file names anywhere); only layers holding matching
    files are fetched when the layers list their files. ``path``: the
    subtree of the image that becomes ``dest``. ``concurrency``: blobs at
    once; ``connections``: ranged GETs at once per big blob. ``progress``
    receives byte counts as blobs arrive.

    Returns a :class:`PullResult`. Raises :class:`~modelimage.errors.PullError`
    (a blob that does not match its digest, DEST not writable),
    :class:`~modelimage.errors.UnsafeLayer` (a layer that would write outside
    DEST), :class:`~modelimage.errors.BadLayer` (not a tar, truncated),
    :class:`~modelimage.errors.SourceError` and registry errors."""
    job = prepare_pull(source, dest, path=path, include=include, platform=platform, concurrency=concurrency,
                       connections=connections, retries=retries, insecure=insecure, credentials=credentials)
    return job.run(progress)
