"""What an image puts in DEST, and whether DEST still holds it.

:class:`TreeModel` applies layers to an in-memory tree instead of a disk
(regular files with their sha256, symlinks with their targets), by the
rules :mod:`.changes` holds for pull and ``inspect REF`` alike; :func:`verify` compares DEST with it,
re-hashing every file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import PullError
from ..image import Chooser, open_image
from ..registry.fetch import FetchStats
from ..registry.keychain import Credentials
from .changes import Change, Node, Tree, apply_layer, member_change, selected
from .extract import RESERVED
from .layers import Layer, Selection, classify, glob_match, subtree
from .result import VerifyResult
from .schedule import plan_tasks
from .state import hash_file
from .stream import Stream, decompressed, members


@dataclass(frozen=True)
class Hashed:
    """A file's bytes as verify knows them: ``size`` in bytes, ``sha256`` as ``sha256:HEX``."""

    size: int
    sha256: str | None


@dataclass
class TreeModel:
    """What a sequence of layers leaves in the destination, computed without
    writing, by THE rules (:func:`~.changes.apply_layer`): regular files
    (``data``: :class:`Hashed`), symlinks with their targets, folders."""

    selection: Selection
    tree: Tree = field(default_factory=dict)

    def apply(self, stream: Stream, label: str) -> None:
        """Apply one tar layer, hashing its regular files as they stream."""
        changes = []
        for m in members(stream, label):
            c = member_change(m, label)
            c = selected(c, self.selection, label) if c is not None else None
            if c is None:
                continue
            if c.kind == "file":
                h = hashlib.sha256()
                stream.seek(m.offset_data)
                stream.copy_to(m.size, None, h)
                c = replace(c, data=Hashed(m.size, "sha256:" + h.hexdigest()))
            changes.append(c)
        apply_layer(self.tree, changes, label)

    def add_files(self, files: dict[str, Hashed], label: str) -> None:
        """A layer that lists its files (DEST-relative path -> size and sha256)."""
        apply_layer(self.tree, [Change("file", rel, data=h) for rel, h in files.items()], label)

    @property
    def nodes(self) -> dict[str, Node]:
        """Files and symlinks (DEST-relative), without folders."""
        return {rel: n for rel, n in self.tree.items() if n.kind != "dir"}


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
                model.add_files({rel: Hashed(f.size, f.sha256) for rel, f in t.files.items()}, layer.label)
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
        if os.path.islink(full) or not os.path.isfile(full) or st.st_size != node.data.size:
            return "changed"
        return None if hash_file(full) == node.data.sha256 else "changed"

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
