"""What an image puts in DEST, and whether DEST still holds it.

:class:`TreeModel` applies layers to an in-memory tree instead of a disk
(regular files with their sha256, symlinks with their targets, whiteouts
applied as the OCI image spec says); :func:`verify` compares DEST with it,
re-hashing every file.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadLayer, PullError
from ..image import Chooser, open_image
from ..registry.fetch import FetchStats
from ..registry.keychain import Credentials
from .extract import OPAQUE, RESERVED, WHITEOUT
from .layers import Layer, Selection, classify, glob_match, normalize, subtree
from .result import VerifyResult
from .schedule import plan_tasks
from .state import hash_file
from .stream import Stream, decompressed, members


@dataclass(frozen=True)
class Node:
    kind: str  # "file" | "symlink"
    size: int = 0
    sha256: str | None = None
    link: str | None = None


@dataclass
class TreeModel:
    """What a sequence of layers leaves in the destination, computed without
    writing: regular files with their sha256, symlinks with their targets."""

    selection: Selection
    nodes: dict[str, Node] = field(default_factory=dict)

    _dirs: set[str] = field(default_factory=set)  # folders some node was put in (may be stale)

    def apply(self, stream: Stream, label: str) -> None:
        """Apply one tar layer: its whiteouts to what earlier layers left
        (OCI image spec), its entries in order (a later one wins)."""
        touched: set[str] = set()
        for m in members(stream, label):
            name = normalize(m.name, label)
            if not name:
                continue
            base, parent = posixpath.basename(name), posixpath.dirname(name)
            if base.startswith(WHITEOUT):
                if base == WHITEOUT:
                    raise BadLayer(f"{label}: {m.name!r} is a whiteout that names nothing (OCI image spec: "
                                   "'.wh.' must be followed by a name); refusing the layer")
                if base == OPAQUE:
                    rel = self.selection.covering(parent)
                    if rel is not None:
                        self._drop(rel, keep=touched)
                elif not base.startswith(WHITEOUT + WHITEOUT):
                    rel = self.selection.covering(posixpath.join(parent, base[len(WHITEOUT):]))
                    if rel is not None:
                        self._drop(rel, keep=touched, itself=True)
                continue
            rel = self.selection.relative(name)
            if not rel:
                continue
            if m.isdir():
                self.nodes.pop(rel, None)  # a folder replaces a file
                continue
            if not self.selection.wants(rel):
                continue
            if m.isreg():
                h = hashlib.sha256()
                stream.seek(m.offset_data)
                stream.copy_to(m.size, None, h)
                self.add(rel, Node("file", m.size, "sha256:" + h.hexdigest()))
            elif m.issym():
                self.add(rel, Node("symlink", link=m.linkname))
            elif m.islnk():
                target = self.selection.relative(normalize(m.linkname, label))
                if target and target in self.nodes:
                    self.add(rel, self.nodes[target])  # to a symlink: that symlink
            touched.add(rel)

    def add(self, rel: str, node: Node) -> None:
        """``rel`` holds ``node``; a file in the way of its folders, or a folder where it goes, is gone."""
        if rel in self._dirs:
            self._drop(rel, keep=set())
            self._dirs.discard(rel)
        parts = rel.split("/")
        for i in range(1, len(parts)):
            a = "/".join(parts[:i])
            self.nodes.pop(a, None)
            self._dirs.add(a)
        self.nodes[rel] = node

    def _drop(self, rel: str, *, keep: set[str], itself: bool = False) -> None:
        for key in list(self.nodes):
            if key in keep:
                continue
            inside = not rel or key.startswith(rel + "/")
            if inside or (itself and key == rel):
                del self.nodes[key]


SIGNATURE_FILE = "model.sig"  # OpenSSF model signing's default name


def dest_files(dest: Path) -> dict[str, os.stat_result]:
    """Files and symlinks under ``dest`` (relative POSIX paths), without the
    puller's own record and staging folder."""
    out: dict[str, os.stat_result] = {}
    for root, dirs, files in os.walk(dest):
        rel_root = os.path.relpath(root, dest)
        if rel_root == ".":
            dirs[:] = [d for d in dirs if d not in RESERVED]
            files = [f for f in files if f not in RESERVED]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = name if rel_root == "." else f"{rel_root}/{name}".replace(os.sep, "/")
            out[rel] = os.lstat(os.path.join(root, name))
    return out


def verify(source: str, dest: str | os.PathLike, *, include: Sequence[str] = (), path: str | None = None,
           platform: str | None = None, connections: int | None = None,
           insecure: frozenset[str] | set[str] = frozenset(), credentials: Credentials | None = None,
           workers: int = 4, choose: Chooser | None = None) -> VerifyResult:
    """Compare ``dest`` with what pulling ``source`` would put there: every
    file re-hashed. Layers that list their files (and raw file layers) are
    compared by their lists; others are streamed (their digest checked) and
    each regular file hashed on the way."""
    stats = FetchStats()
    image = open_image(source, platform=platform, insecure=frozenset(insecure), credentials=credentials,
                       connections=connections, stats=stats, choose=choose)
    try:
        prefix = subtree(path, image)
        selection = Selection(prefix, tuple(include))
        model = TreeModel(selection)
        schedule = plan_tasks(classify(image), prefix=prefix, include=tuple(include), ours=image.target is not None,
                              whole_image=path is not None, target=image.target, config=image.config)
        for t in schedule.tasks:
            layer, d = t.layer, t.layer.desc
            if layer.known:
                for rel, f in t.files.items():
                    model.add(rel, Node("file", f.size, f.sha256))
                continue
            h, seen = hashlib.sha256(), 0

            def counted(layer: Layer = layer, h: Any = h) -> Iterator[memoryview]:
                nonlocal seen
                for view in image.read(layer.desc, 0):
                    h.update(view)
                    seen += len(view)
                    yield view

            chunks = counted()
            stream = Stream(decompressed(chunks, d.media_type))
            model.apply(stream, layer.label)
            stream.drain()
            for _ in chunks:
                pass
            if "sha256:" + h.hexdigest() != d.digest or seen != d.size:
                raise PullError(f"{layer.label}: the blob does not match its digest")
    finally:
        image.close()

    root = os.path.realpath(dest)
    if not os.path.isdir(root):
        raise PullError(f"{dest}: no such folder")
    on_disk = {rel: st for rel, st in dest_files(Path(root)).items()
               if not include or any(glob_match(rel, p) for p in include)}
    missing, changed = [], []

    def check(item: tuple[str, Node]) -> str | None:
        rel, node = item
        st = on_disk.get(rel)
        if st is None:
            return "missing"
        full = os.path.join(root, rel)
        if node.kind == "symlink":
            return None if os.path.islink(full) and os.readlink(full) == node.link else "changed"
        if os.path.islink(full) or not os.path.isfile(full) or st.st_size != node.size:
            return "changed"
        return None if hash_file(full) == node.sha256 else "changed"

    items = sorted(model.nodes.items())
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for (rel, _), verdict in zip(items, pool.map(check, items)):
            if verdict == "missing":
                missing.append(rel)
            elif verdict == "changed":
                changed.append(rel)
    # DEST/model.sig: the image's signature a pull wrote (modelimage.signing.pulled), not a model file
    extra = sorted(set(on_disk) - set(model.nodes) - {SIGNATURE_FILE})
    return VerifyResult(source, image.digest, str(dest), len(items), tuple(missing), tuple(extra), tuple(changed))
