"""The model files of an image, with the sha256 recorded when it was built.

What a signature lists and what ``verify`` compares: the files a pull puts
into DEST, each with its digest taken from the manifest alone, never from
the weights: a tar layer's file list (``dev.modelimage.files``), or a raw
layer's own digest (ModelPack / Docker Model Runner artifacts, where the
blob IS the file). Paths are relative to the folder that becomes DEST
(the recorded ``dev.modelimage.target``, else the image root), exactly as
the pull lays them out, so the same list checks a pulled folder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..pull import changes
from ..pull.changes import Change, apply_layer, selected
from ..pull.layers import Selection, classify, subtree
from .oms import SignedFile, SigningError

if TYPE_CHECKING:
    from ..image import Image


def image_files(image: Image) -> list[SignedFile]:
    """Every model file of ``image`` (path relative to DEST, ``sha256:HEX``),
    sorted by path, laid out by the rules a pull follows
    (:mod:`modelimage.pull.changes`: later layers win over earlier ones for
    the same path, a file where a folder was replaces what was in it).

    Layers that do not list their files: in a modelimage image (it records
    its target) they are the base image's and are not model files; in any
    other image they could hold anything, and :class:`SigningError` says
    so (their files could only be known by reading them). Raises
    :class:`SigningError` as well when no file is found."""
    prefix = subtree(None, image)
    selection, tree = Selection(prefix), changes.Tree()
    for layer in classify(image):
        desc = layer.desc
        if layer.listed is None:
            if image.target is not None:
                continue  # a base image's layer: pull leaves it out too
            raise SigningError(f"{layer.label}: a {desc.media_type} layer that does not list its files; "
                               "only images whose layers record their files' sha256 (built by modelimage, "
                               "ModelPack and other one-file-per-layer artifacts) can be signed without "
                               "reading the weights")
        listed = [selected(Change("file", f.name, data=f.sha256), selection, layer.label) for f in layer.listed]
        apply_layer(tree, [c for c in listed if c is not None], layer.label)  # as a pull lays them out
    files: dict[str, str] = changes.files(tree)
    if not files:
        raise SigningError(f"{image.name}: no model files in the image" + (f" under /{prefix}" if prefix else ""))
    return [SignedFile(p, files[p]) for p in sorted(files)]

