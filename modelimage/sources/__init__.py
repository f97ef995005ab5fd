"""Where a model comes from: a local folder or file, ``hf://ORG/REPO[@REV]``
or ``s3://BUCKET/PREFIX``.

:func:`open_source` turns a model entry's ``source`` into something
:func:`modelimage.inspect.inspect_model` reads, plus the provenance the
image should carry:

* a local path stays as it is;
* ``hf://`` is downloaded through huggingface_hub into its cache (only the
  files the include/exclude globs select; ``HF_TOKEN``, ``HF_ENDPOINT``,
  ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` apply) and becomes the local snapshot
  folder of the commit the revision resolved to (:mod:`.hf`);
* ``s3://`` stays remote: a listing of objects whose bytes are read by
  range while the layers stream (:mod:`.s3`).

From there on every source is the same to inspect, plan and build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..oci import ANNOTATION_PREFIX

if TYPE_CHECKING:
    from ..config import ModelEntry
    from ..inspect import RemoteFolder

LABEL_SOURCE = ANNOTATION_PREFIX + "source"  # hf://org/repo, s3://bucket/prefix
LABEL_REVISION = ANNOTATION_PREFIX + "revision"  # the commit sha a hf:// revision resolved to
OCI_SOURCE = "org.opencontainers.image.source"
OCI_REVISION = "org.opencontainers.image.revision"


@dataclass(frozen=True)
class OpenedSource:
    """A source ready for inspect: ``location`` (a local path or a remote
    folder), the model's default ``name`` (None: from the folder name), and
    the ``labels`` that say where exactly the files came from."""

    location: Path | RemoteFolder
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    revision: str | None = None  # the resolved commit, for hf://


def open_source(entry: ModelEntry) -> OpenedSource:
    """Resolve ``entry.source``; hf:// downloads what the globs select (or
    finds it in the cache), s3:// only parses here (listing is inspect's)."""
    if entry.source.startswith("hf://"):
        from . import hf

        return hf.open_repo(entry.source, entry.include, entry.exclude)
    if entry.source.startswith("s3://"):
        from .s3 import S3Prefix

        prefix = S3Prefix.parse(entry.source, entry.endpoint)
        return OpenedSource(prefix, labels={LABEL_SOURCE: str(prefix).rstrip("/")})
    return OpenedSource(entry.path)
