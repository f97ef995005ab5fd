"""Which layers and which files a pull takes.

- :func:`layer_file_lists` is THE one place that reads what a layer says it
  holds (the ``dev.modelimage.files`` layer annotation: a JSON list of
  ``{"path", "size", "sha256"}``, or the image's file-list layer when the
  lists did not fit the manifest); everything else asks it.
- :func:`classify` sorts a layer into a tar layer (with or without a file
  list), a raw layer whose blob is one file (ModelPack's
  ``org.cncf.model.filepath``, or ``org.opencontainers.image.title``), or
  something else (left out).
- :class:`Selection` says which part of a layer's tree lands in the
  destination: a subtree, ``--include`` globs, and the files still wanted.
- :func:`normalize` turns a tar member name into a clean relative path, or
  refuses it (absolute, ``..``, NUL).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Literal

from .. import filelist
from ..errors import SourceError, UnsafeLayer
from ..image import ANNOTATION_TARGET
from ..oci import ANNOTATION_FILES, ANNOTATION_TITLE, Descriptor

if TYPE_CHECKING:
    from ..image import Image

ANNOTATION_FILEPATH = "org.cncf.model.filepath"  # ModelPack (modelpack/model-spec annotations.go)

LayerKind = Literal["tar", "raw", "other"]


@dataclass(frozen=True)
class Listed:
    """One file a layer says it holds: ``name`` root-relative (no leading
    ``/``), ``size`` in bytes, ``sha256`` as ``sha256:HEX``."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Layer:
    """A layer of the image, classified. ``listed`` is what the layer says
    it holds; None when unknown (a tar without a file list: its tar entries
    decide, and it may hold whiteouts, links and overwrites)."""

    index: int  # 0-based, manifest order
    desc: Descriptor
    kind: LayerKind
    listed: tuple[Listed, ...] | None
    label: str  # "SOURCE: layer N (sha256:...)" for messages

    @property
    def known(self) -> bool:
        return self.listed is not None


def is_tar(media_type: str) -> bool:
    """``...tar``, ``...tar+gzip``, ``...tar.gzip``, ``...tar+zstd``: the
    media type of a tar layer (image, ModelPack ``.tar``, Docker's config tar)."""
    tokens = media_type.replace("+", ".").split(".")
    return "tar" in tokens or media_type.endswith("/tar")


def layer_label(source: str, index: int, desc: Descriptor) -> str:
    return f"{source}: layer {index + 1} ({desc.digest[:19]})"


def layer_file_lists(image: Image) -> list[tuple[Listed, ...] | None]:
    """What each layer of ``image`` says it holds, in manifest order: its
    files (root-relative names, sizes in bytes, sha256), or None when the
    layer does not say (no list, or one that is not modelimage's).

    The one reader of layer file lists: the ``dev.modelimage.files`` layer
    annotation (a JSON array of ``{"path", "size", "sha256"}``), or, for
    images with too many files for the manifest, the file-list layer
    (:mod:`modelimage.filelist`, annotated ``dev.modelimage.filelist``),
    fetched (verified against its digest) and read here.
    Raises :class:`~modelimage.errors.UnsafeLayer` for a listed name that
    is absolute after its leading ``/`` or climbs out with ``..``."""
    elsewhere: dict[str, list] = {}
    for d in image.layers:
        if d.annotations.get(filelist.ANNOTATION_FILELIST) and is_tar(d.media_type) \
                and d.size <= filelist.MAX_LIST_BYTES:
            try:
                own, by_digest = filelist.read_list_layer(image.fetch(d))
            except (ValueError, SourceError):
                continue  # not ours after all: its layers are read as tars
            elsewhere.update(by_digest)
            elsewhere[d.digest] = own
    out: list[tuple[Listed, ...] | None] = []
    for i, d in enumerate(image.layers):
        raw = d.annotations.get(ANNOTATION_FILES)
        listed = None
        if is_tar(d.media_type) and (raw or d.digest in elsewhere):
            label = layer_label(image.name, i, d)
            try:
                files = json.loads(raw) if raw else elsewhere[d.digest]
                listed = tuple(Listed(normalize(str(f["path"]).lstrip("/"), label), int(f["size"]), str(f["sha256"]))
                               for f in files)
            except (ValueError, KeyError, TypeError):
                listed = None  # not ours after all: read the tar
        out.append(listed)
    return out


def classify(image: Image) -> list[Layer]:
    """Every layer of ``image`` classified (see the module docstring)."""
    lists = layer_file_lists(image)
    layers = []
    for i, d in enumerate(image.layers):
        label = layer_label(image.name, i, d)
        if is_tar(d.media_type):
            layers.append(Layer(i, d, "tar", lists[i], label))
            continue
        title = d.annotations.get(ANNOTATION_FILEPATH) or d.annotations.get(ANNOTATION_TITLE)
        if title:
            layers.append(Layer(i, d, "raw", (Listed(normalize(title.lstrip("/"), label), d.size, d.digest),), label))
        else:
            layers.append(Layer(i, d, "other", (), label))
    return layers


def subtree(path: str | None, image: Image) -> str:
    """The part of the image's tree that becomes DEST, root-relative: ``path``,
    else the folder modelimage recorded (``dev.modelimage.target``), else the
    whole root (``""``)."""
    if path is not None:
        return normalize(path.strip().strip("/"), f"--path {path!r}")
    if image.target is not None:
        return normalize(image.target.strip().strip("/"), f"{image.name}: {ANNOTATION_TARGET}")
    return ""


# ---------------------------------------------------------------- names


def normalize(name: str, label: str) -> str:
    """A member name as a clean relative POSIX path (``""`` for the root).
    ``./`` prefixes are dropped; absolute names, ``..`` and NUL bytes raise
    :class:`~modelimage.errors.UnsafeLayer`."""
    if name.startswith("/"):
        raise UnsafeLayer(f"{label}: {name!r} is an absolute path; refusing the layer")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"{label}: {name!r} climbs out with '..'; refusing the layer")
    if any("\0" in p for p in parts):
        raise UnsafeLayer(f"{label}: {name!r} has a NUL byte; refusing the layer")
    return "/".join(parts)


def glob_match(rel: str, pattern: str) -> bool:
    """Globs without ``/`` match the file name anywhere, others the whole
    path (as ``build --include`` does)."""
    if "/" in pattern:
        return fnmatchcase(rel, pattern.lstrip("/"))
    return fnmatchcase(rel.rsplit("/", 1)[-1], pattern)


def paths_overlap(paths: Sequence[str]) -> bool:
    """Whether any two paths are equal or one lies below the other."""
    seen = sorted(paths)
    return any(b == a or b.startswith(a + "/") for a, b in zip(seen, seen[1:]))


@dataclass(frozen=True)
class Selection:
    """Which part of a layer's tree lands in the destination: the subtree
    ``prefix`` (root-relative, ``""`` for all), files matching ``include``
    (all when empty) and, for layers that list their files, only ``wanted``."""

    prefix: str = ""
    include: tuple[str, ...] = ()
    wanted: frozenset[str] | None = None  # destination-relative paths

    def relative(self, name: str) -> str | None:
        """``name`` (root-relative) relative to the subtree, or None outside it."""
        if not self.prefix:
            return name
        if name == self.prefix:
            return ""
        if name.startswith(self.prefix + "/"):
            return name[len(self.prefix) + 1 :]
        return None

    def covering(self, name: str) -> str | None:
        """For a whiteout of ``name``: the destination path it removes, ``""``
        when it removes the whole subtree (``name`` is it or an ancestor), None
        when it is elsewhere."""
        if not self.prefix:
            return name
        if not name or name == self.prefix or self.prefix.startswith(name + "/"):
            return ""
        return self.relative(name)

    def wants(self, rel: str) -> bool:
        if self.wanted is not None and rel not in self.wanted:
            return False
        return not self.include or any(glob_match(rel, p) for p in self.include)

    @property
    def all_dirs(self) -> bool:
        """Empty directories too (a whole tree, no filter)."""
        return not self.include and self.wanted is None
