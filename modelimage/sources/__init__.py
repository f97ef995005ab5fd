"""Where a model comes from: a local folder or file, ``hf://ORG/REPO[@REV]``
or ``s3://BUCKET/PREFIX``.

:func:`open_source` turns a model entry's ``source`` into something
:func:`modelimage.inspect.inspect_model` reads, plus the provenance the
image should carry:

* a local path stays as it is;
* ``hf://`` is resolved to one commit and listed (the Hub's API, with huggingface_hub's rules)
  (only the files the include/exclude globs select; ``HF_TOKEN``,
  ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` apply) and stays
  remote: its files stream from the Hub while the layers are written
  (:mod:`.hub`), unless the Hugging Face cache already holds them, or
  ``download`` asks for a local folder (:mod:`.hf`);
* ``s3://`` stays remote: a listing of objects whose bytes are read by
  range while the layers stream (:mod:`.s3`).

From there on every source is the same to inspect, plan and build.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .opened import LABEL_REVISION, LABEL_SOURCE, OCI_REVISION, OCI_SOURCE, OpenedSource

if TYPE_CHECKING:
    from ..config import ModelEntry

__all__ = ["LABEL_REVISION", "LABEL_SOURCE", "OCI_REVISION", "OCI_SOURCE", "OpenedSource", "open_source"]


def open_source(entry: ModelEntry, *, download: bool = False) -> OpenedSource:
    """Resolve ``entry.source``; hf:// resolves its commit and lists it (or
    finds it in the cache; ``download``: downloads it into the cache, for
    what needs a local folder), s3:// only parses here (listing is inspect's)."""
    if entry.source.startswith("hf://"):
        from . import hf

        return hf.open_repo(entry.source, entry.include, entry.exclude, download=download)
    if entry.source.startswith("s3://"):
        from .s3 import S3Prefix

        prefix = S3Prefix.parse(entry.source, entry.endpoint)
        return OpenedSource(prefix, labels={LABEL_SOURCE: str(prefix).rstrip("/")})
    return OpenedSource(entry.path)
