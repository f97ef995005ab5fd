"""An image's model files as a folder that is not on a local disk, for
``modelimage inspect REF`` (and ``oci:DIR[:TAG]``, ``oci-archive:FILE``).

:class:`ImageFolder` lists the files an image holds under its model folder
(``dev.modelimage.target``, else the whole root), the ones a pull writes
(the layers applied by :mod:`modelimage.pull.changes`, the rules pull and
verify apply), by walking the headers of its uncompressed tar layers with
small ranged reads (tarfile seeks over
member data, so each member costs one read of its header), and takes raw
layers (ModelPack, Docker Model Runner: the blob IS the file) as they are.
Each file is an :class:`ImageFile`: a byte range of a blob that
:func:`modelimage.inspect.inspect_model` reads by range like an S3 object,
so the safetensors and GGUF headers are fetched and the tensor data never
is. :attr:`ImageFolder.fetched` counts the bytes that took.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from ..content import RangedObject, RangeFile
from ..errors import SourceError
from ..image import Image
from ..oci import Descriptor
from ..pull import changes
from ..pull.changes import Change, Tree, apply_layer, member_change, selected
from ..pull.layers import Layer, Selection, classify, subtree
from ..pull.schedule import model_layers
from ..pull.stream import sniff
from ..registry.pieces import FetchStats
from .files import SourceFile
from .files import selected as selected_file

READAHEAD = RangedObject.READAHEAD  # bytes per ranged read: a tar header and what follows it
PIECE = 8 << 20  # reads of a whole (small) file go in pieces of this size


@dataclass(frozen=True)
class ImageFile(RangedObject):
    """``size`` bytes at ``offset`` in one blob of an image (a RemoteObject)."""

    image: Image
    blob: Descriptor
    offset: int
    size: int
    path: str  # in the image, for messages

    def __str__(self) -> str:
        return f"{self.image.name}:/{self.path}"

    @property
    def stamp(self) -> tuple[int, str]:
        """(size, ``DIGEST@OFFSET``): a blob never changes, so neither does a range of it."""
        return (self.size, f"{self.blob.digest}@{self.offset}")

    @property
    def identity(self) -> list[str | int]:
        """What the digest cache keys on: the same range of the same blob is the same bytes."""
        return ["image", self.blob.digest, self.offset, self.size]

    def get(self, offset: int, length: int) -> bytes:
        self.check_range(offset, length)
        assert self.image.read_range is not None
        return self.image.read_range(self.blob, self.offset + offset, length)

    def read(self, offset: int, length: int) -> Iterator[bytes | memoryview]:
        for o in range(offset, offset + length, PIECE):
            yield self.get(o, min(PIECE, offset + length - o))


class ImageFolder:
    """The model folder of an image, listed from its layers (a RemoteFolder)."""

    def __init__(self, image: Image, stats: FetchStats):
        if image.read_range is None:
            raise SourceError(f"{image.name}: cannot be read by range")
        self.image, self.stats = image, stats
        self.root = subtree(None, image)

    @property
    def name(self) -> str:
        labels = (self.image.config.get("config") or {}).get("Labels") or {}
        named = labels.get("dev.modelimage.name") or (self.image.manifest.get("annotations") or {}).get(
            "dev.modelimage.name")
        return str(named or PurePosixPath(self.root).name or (self.image.repository or self.image.name)
                   .rsplit("/", 1)[-1].split(":")[0].split("@")[0])

    @property
    def fetched(self) -> int:
        """Bytes read so far (manifests and config included): over the
        network from a registry, from disk for a layout."""
        return self.stats.bytes

    @property
    def total(self) -> int:
        return sum(d.size for d in self.image.layers)

    def list_files(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[SourceFile]:
        """The files under the model folder, as a pull writes them: the
        layers applied in order by THE rules (:mod:`modelimage.pull.changes`:
        later files replace earlier ones, whiteouts and opaque folders, the
        root's too, reach lower layers, hard links are their target's bytes,
        symlinks that lead to a file inside the folder are that file),
        hidden names skipped, include/exclude applied as for a local folder."""
        selection = Selection(self.root)
        tree: Tree = {}
        layers = classify(self.image)
        for layer in layers:
            if layer.kind == "raw" and layer.listed:
                name = layer.listed[0].name
                change = Change("file", name, data=ImageFile(self.image, layer.desc, 0, layer.desc.size, name))
                apply_layer(tree, [c for c in [selected(change, selection, layer.label)] if c], layer.label)
            elif layer.kind == "tar" and self._holds_model(layer, layers):
                if layer.known and not any(selection.relative(f.name) is not None for f in layer.listed or ()):
                    continue  # lists no file of the model: not worth a read
                apply_layer(tree, self._changes(layer.desc, layer.label, selection), layer.label)
        files = []
        for rel, f in sorted(changes.files(tree).items()):
            if any(p.startswith(".") for p in rel.split("/")) or not selected_file(rel, include, exclude):
                continue
            files.append(SourceFile(rel, f, f.size))
        if not files:  # an empty report with exit 0 would read as "no model"
            where = f"under /{self.root}" if self.root else "in its layers"
            raise SourceError(f"{self.image.name}: no files {where}"
                              + (" (after include/exclude)" if include or exclude else ""))
        return files

    def _holds_model(self, layer: Layer, layers: Sequence[Layer]) -> bool:
        """Whether a tar layer may hold model files: a layer that lists its
        files; in an image that records no model folder, every layer; in a
        modelimage image, a layer without a list is its base's when another
        layer lists its files, or, when a copy dropped every layer
        annotation (skopeo, podman), when the config's history does not name
        it a ``modelimage build`` layer (as :mod:`modelimage.pull.schedule`
        decides what a pull takes). An image whose history names none
        (built by podman from a rendered Dockerfile) has every layer read."""
        if layer.known or self.image.target is None:
            return True
        if any(other.known and other.kind == "tar" for other in layers):
            return False
        named = model_layers(self.image.config, len(layers))
        return named is None or layer.index in named

    def _changes(self, desc: Descriptor, label: str, selection: Selection) -> list[Change]:
        """One tar layer's changes (DEST-relative, as a pull takes them; a
        file's ``data`` is its :class:`ImageFile`), its headers read by range."""
        assert self.image.read_range is not None
        read = self.image.read_range
        blob = io.BufferedReader(RangeFile(lambda o, n: read(desc, o, n), desc.size), buffer_size=READAHEAD)
        compression = sniff(blob.peek(4)[:4])  # what the bytes say (media types lie)
        if compression != "none":
            raise SourceError(f"{label} is compressed ({compression}): its files cannot be read by range; "
                              "pull the image and inspect the folder")
        out = []
        try:
            with tarfile.open(fileobj=blob, mode="r:") as tar:
                for m in tar:
                    c = member_change(m, label)
                    c = selected(c, selection, label) if c is not None else None
                    if c is None:
                        continue
                    if c.kind == "file":
                        c = replace(c, data=ImageFile(self.image, desc, m.offset_data, m.size,
                                                      f"{self.root}/{c.path}" if self.root else c.path))
                    out.append(c)
        except tarfile.TarError as e:
            raise SourceError(f"{label}: not a tar layer ({e})") from None
        return out
