"""A source resolved for inspect: where its files are, and the labels that
say where exactly they came from (the provenance the image carries)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..oci import ANNOTATION_PREFIX

if TYPE_CHECKING:
    from .files import RemoteFolder

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
