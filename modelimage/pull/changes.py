"""What a stack of tar layers makes: THE rules, for ``pull`` and ``inspect REF``.

OCI image spec, ``layer.md`` ("Changesets", "Whiteouts", "Hard Links"),
as umoci, containerd and podman apply them:

- a member's name is cleaned by :func:`~.layers.normalize` (absolute
  names, ``..`` and NUL bytes refuse the layer);
- ``DIR/.wh.NAME`` removes ``DIR/NAME`` and what is below it;
  ``DIR/.wh..wh..opq`` removes what is below ``DIR`` (``DIR`` may be the
  root: everything). Both reach the LOWER layers only, wherever they stand
  in the tar (moby#17819, umoci#224). A whiteout that names nothing
  (``.wh.``, ``.wh..``, ``.wh...``) refuses the layer (image-spec#1314);
  other ``.wh..wh.*`` names are aufs bookkeeping and ignored;
- every other member replaces what is at its path, in tar order: a file or
  a symlink over a folder removes what was in it, a folder over a folder
  keeps it, missing parent folders are made, a file on the way to a path
  becomes a folder, a symlink on the way refuses the layer (nothing is
  written through a symlink);
- a hard link is what its target is at that point: the same layer's entry
  for that path if there is one so far, else the lower layers' (before this
  layer's whiteouts); a link to a symlink is that symlink; a link to
  nothing or to a folder refuses the layer.

:func:`member_change` reads one tar member as a :class:`Change`;
:func:`split_layer` orders a layer's changes (removals first, then the rest
in tar order); :func:`apply_layer` applies them to a tree in memory
(``{path: Node}``), which is how ``inspect REF`` learns an image's files
without writing them. ``pull`` stages members through :func:`member_change`
and applies :func:`split_layer`'s order to DEST (:mod:`.apply`, which also
checks ownership); ``tests/test_pull_changes.py`` holds both to the tree
``umoci unpack`` makes.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..errors import BadLayer, UnsafeLayer
from .layers import Selection, normalize

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_SYMLINKS = 40  # symlinks followed while resolving one path (Linux's MAXSYMLINKS)

ChangeKind = Literal["file", "dir", "symlink", "link", "whiteout", "opaque", "other"]
NodeKind = Literal["file", "dir", "symlink"]


@dataclass(frozen=True)
class Change:
    """One change a layer makes, root-relative. ``file``: ``data`` is what
    holds its bytes (the caller's: a byte range of a blob, a staged file);
    ``symlink``: ``link`` is its target as written; ``link`` (a hard link):
    ``link`` is the path it links to (as written: :func:`selected` and
    :func:`apply_layer` clean it, so a bad one outside what is taken is
    never an error); ``whiteout``: remove
    ``path``; ``opaque``: remove what is below ``path`` (``""``: the root);
    ``other``: a device, fifo or socket (``pull`` refuses it, a listing
    drops it). ``name``: the member's name, for messages."""

    kind: ChangeKind
    path: str
    link: str | None = None
    data: Any = None
    name: str = ""


@dataclass(frozen=True)
class Node:
    """What is at a path of the tree a stack of layers makes: a ``file``
    (``data`` from its :class:`Change`), a ``dir`` or a ``symlink`` (``link``)."""

    kind: NodeKind
    data: Any = None
    link: str | None = None


Tree = dict[str, Node]


def member_change(m: tarfile.TarInfo, label: str) -> Change | None:
    """The change the tar member ``m`` makes (``data`` left None), or None
    for the root folder and aufs bookkeeping. Raises
    :class:`~modelimage.errors.UnsafeLayer` for a name or hard-link target
    :func:`~.layers.normalize` refuses, :class:`~modelimage.errors.BadLayer`
    for a whiteout that names nothing. ``label`` names the layer in messages."""
    name = normalize(m.name, label)
    if not name:
        return None
    parent, base = posixpath.dirname(name), posixpath.basename(name)
    if base.startswith(WHITEOUT):
        if base == OPAQUE:
            return Change("opaque", parent, name=m.name)
        if base in (WHITEOUT, WHITEOUT + ".", WHITEOUT + ".."):
            raise BadLayer(f"{label}: {m.name!r} is a whiteout that names nothing (OCI image spec: "
                           "'.wh.' must be followed by a name); refusing the layer")
        if base.startswith(WHITEOUT + WHITEOUT):
            return None  # .wh..wh.* other than the opaque marker: aufs bookkeeping
        return Change("whiteout", posixpath.join(parent, base[len(WHITEOUT):]), name=m.name)
    if m.isdir():
        return Change("dir", name, name=m.name)
    if m.islnk():
        return Change("link", name, m.linkname, name=m.name)
    if m.issym():
        return Change("symlink", name, m.linkname, name=m.name)
    if m.isreg() and not m.issparse():
        return Change("file", name, name=m.name)
    return Change("other", name, name=m.name)


def split_layer(changes: Iterable[Any]) -> tuple[list[Any], list[Any]]:
    """(removals, the rest): a layer's whiteouts and opaque markers, which
    apply first (to the lower layers only), and its other changes in tar
    order. Takes anything with a ``kind`` (a :class:`Change`, ``pull``'s
    staged entries)."""
    removals, rest = [], []
    for c in changes:
        (removals if c.kind in ("whiteout", "opaque") else rest).append(c)
    return removals, rest


def remove(tree: Tree, path: str, itself: bool = True) -> None:
    """Remove what is below ``path`` (``""``: everything) and, if
    ``itself``, ``path``."""
    if not path:
        tree.clear()
        return
    below = path + "/"
    for p in [p for p in tree if p.startswith(below)]:
        del tree[p]
    if itself:
        tree.pop(path, None)


def apply_layer(tree: Tree, changes: Sequence[Change], label: str) -> None:
    """One layer's changes onto ``tree`` (see the module docstring). Raises
    :class:`~modelimage.errors.BadLayer` for a hard link to nothing or to a
    folder, :class:`~modelimage.errors.UnsafeLayer` for a path below a
    symlink."""
    removals, rest = split_layer(changes)
    this: Tree = {}  # the layer's own entries so far, for its hard links
    adds: list[tuple[str, Node]] = []
    for c in rest:
        if c.kind == "link":
            assert c.link is not None
            target = normalize(c.link, label)
            src = this.get(target) if target in this else tree.get(target)
            if src is None:
                raise BadLayer(f"{label}: {c.name or c.path!r} is a hard link to {c.link!r}, "
                               "which no earlier layer holds")
            if src.kind == "dir":
                raise BadLayer(f"{label}: {c.name or c.path!r} is a hard link to the directory {c.link!r}")
            node = src
        elif c.kind == "file":
            node = Node("file", c.data)
        elif c.kind == "dir":
            node = Node("dir")
        elif c.kind == "symlink":
            node = Node("symlink", link=c.link)
        else:
            node = None  # a device, fifo or socket: nothing a listing reports
        if node is not None:
            this[c.path] = node
        adds.append((c.path, node))  # type: ignore[arg-type]
    for c in removals:
        remove(tree, c.path, itself=c.kind == "whiteout")
    for path, node in adds:
        _put(tree, path, node, label)


def _put(tree: Tree, path: str, node: Node | None, label: str) -> None:
    parts = path.split("/")
    for i in range(1, len(parts)):
        a = "/".join(parts[:i])
        have = tree.get(a)
        if have is not None and have.kind == "dir":
            continue
        if have is not None and have.kind == "symlink":
            raise UnsafeLayer(f"{label}: {path!r} would be written through a symlink ({a} is one); "
                              "refusing the layer")
        tree[a] = Node("dir")
    have = tree.get(path)
    if node is not None and node.kind == "dir" and have is not None and have.kind == "dir":
        return
    if have is not None and have.kind == "dir":
        remove(tree, path, itself=False)
    if node is None:
        tree.pop(path, None)
    else:
        tree[path] = node


def stack(layers: Iterable[tuple[str, Sequence[Change]]]) -> Tree:
    """The tree ``layers`` (``(label, changes)`` in manifest order) make."""
    tree: Tree = {}
    for label, changes in layers:
        apply_layer(tree, changes, label)
    return tree


def resolve(tree: Tree, path: str, root: str = "") -> str | None:
    """Where ``path`` leads once its symlinks are followed, inside the
    subtree ``root`` (as they would be below a pull's DEST): a path of
    ``tree``, or None when it leads nowhere, out of ``root`` (``..``
    above it, an absolute target) or round more than
    :data:`MAX_SYMLINKS` symlinks."""
    base = root.split("/") if root else []
    done, todo, hops = list(base), path.split("/")[len(base):], 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if len(done) == len(base):
                return None
            done.pop()
            continue
        node = tree.get("/".join(done + [part]))
        if node is None:
            return None
        if node.kind == "symlink":
            hops += 1
            if hops > MAX_SYMLINKS or not node.link or node.link.startswith("/"):
                return None
            todo = node.link.split("/") + todo
            continue
        done.append(part)
    return "/".join(done)


def files(tree: Tree, root: str = "") -> dict[str, Any]:
    """``{path: data}`` of every file below ``root`` (root-relative paths):
    regular files and hard links, and symlinks that lead to one inside
    ``root`` (:func:`resolve`), with that file's data."""
    prefix = root + "/" if root else ""
    out = {}
    for path, node in tree.items():
        if not path.startswith(prefix) or node.kind == "dir":
            continue
        if node.kind == "symlink":
            to = resolve(tree, path, root)
            node = tree.get(to) if to is not None else None  # type: ignore[assignment]
            if node is None or node.kind != "file":
                continue
        out[path] = node.data
    return out


def selected(change: Change, selection: Selection, label: str) -> Change | None:
    """``change`` with its paths relative to ``selection``'s subtree (what
    lands in DEST), or None when it lands nowhere: outside the subtree, a
    file or link ``include``/``wanted`` leave out, a hard link whose target
    is left out (nothing to link to), a folder when only some files are
    taken. A whiteout of the subtree or of a folder above it removes the
    whole subtree (path ``""``). Raises
    :class:`~modelimage.errors.UnsafeLayer` for a hard link into the
    subtree whose target :func:`~.layers.normalize` refuses."""
    if change.kind in ("whiteout", "opaque"):
        rel = selection.covering(change.path)
        return None if rel is None else replace(change, path=rel)
    rel = selection.relative(change.path)
    if not rel:
        return None
    if change.kind == "dir":
        return replace(change, path=rel) if selection.all_dirs else None
    if not selection.wants(rel):
        return None
    if change.kind == "link":
        assert change.link is not None
        target = selection.relative(normalize(change.link, label))
        if not target or not selection.wants(target):
            return None
        return replace(change, path=rel, link=target)
    return replace(change, path=rel)
