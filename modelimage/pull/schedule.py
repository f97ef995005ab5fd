"""Which layers a pull fetches, and what a resume skips.

:func:`plan_tasks` turns classified layers into tasks (a layer and the part
of it that lands in DEST), leaving out layers that hold nothing selected
and, for modelimage's images on a base, the base's layers: those that do
not list their files, or, when a copy dropped the layer annotations
(skopeo, podman), those the config's history does not name as
``modelimage build`` layers (:func:`model_layers`). :func:`plan_resume`
drops what an earlier run already put in DEST, adopts files that already
hold the image's bytes, and lists what is in the way.

Every task may be fetched and staged at once; layers are applied one by
one in manifest order (:mod:`.job`). ``ordered`` says how a resume works:
by layer (some layer's content is unknown, or lists overlap) or by file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .layers import Layer, Listed, Selection, paths_overlap
from .state import Record, hash_file

MODEL_HISTORY = "modelimage build:"  # history created_by of the layers modelimage builds (build.py)


@dataclass
class Task:
    """One layer to fetch and apply; ``files`` (DEST-relative -> listing)
    for layers that list their files."""

    layer: Layer
    selection: Selection
    files: dict[str, Listed] = field(default_factory=dict)


@dataclass
class Schedule:
    """The pull, planned: tasks in manifest order, layers skipped, warnings,
    and whether the resume goes by layer (``ordered``)."""

    tasks: list[Task]
    skipped: int
    warnings: list[str]
    ordered: bool
    listed_files: int = 0  # files the layers list, before --include and --path (0: not known)


def model_layers(config: dict[str, Any], n_layers: int) -> set[int] | None:
    """Indexes of the layers modelimage built, from the config's history
    (entries with ``empty_layer`` make no layer); None when the history
    does not describe the layers or names none as modelimage's."""
    history = [h for h in config.get("history") or [] if isinstance(h, dict) and not h.get("empty_layer")]
    if len(history) != n_layers:
        return None
    ours = {i for i, h in enumerate(history) if str(h.get("created_by", "")).startswith(MODEL_HISTORY)}
    return ours or None


def plan_tasks(layers: Sequence[Layer], *, prefix: str, include: tuple[str, ...], ours: bool,
               whole_image: bool, target: str | None, config: dict[str, Any] | None = None) -> Schedule:
    """The tasks for ``layers``. ``ours`` (the image records its target)
    and not ``whole_image`` (no ``--path``) leaves out a base image's
    layers: those without a file list when some layer lists its files,
    else those the history does not name (``config``)."""
    tasks: list[Task] = []
    warnings: list[str] = []
    skipped = base = 0
    any_listed = any(layer.known and layer.kind == "tar" for layer in layers)
    named = None if any_listed else model_layers(config or {}, len(layers))
    for layer in layers:
        if layer.kind == "other":
            warnings.append(f"layer {layer.index + 1} ({layer.desc.media_type}) is neither a tar "
                            "nor a named file; left out")
            skipped += 1
            continue
        if (ours and not whole_image and layer.kind == "tar" and not layer.known
                and (any_listed or (named is not None and layer.index not in named))):
            base += 1  # a base image's layer: the model is in the layers modelimage built
            skipped += 1
            continue
        task = Task(layer, Selection(prefix, include))
        if layer.known:
            for f in layer.listed or ():
                rel = task.selection.relative(f.name)
                if rel and task.selection.wants(rel):
                    task.files[rel] = f
            if not task.files:
                skipped += 1
                continue
            task.selection = Selection(prefix, include, frozenset(task.files))
        tasks.append(task)
    if base:
        warnings.append(f"{base} base-image layer{'s' if base > 1 else ''} left out "
                        f"(the model is under {target}; --path / pulls everything)")
    known_paths = [rel for t in tasks for rel in t.files]
    ordered = (any(not t.layer.known for t in tasks) or paths_overlap(known_paths)
               or any(rel.rsplit("/", 1)[-1].startswith(".wh.") for rel in known_paths))
    listed = sum(len(layer.listed or ()) for layer in layers)
    return Schedule(tasks, skipped, warnings, ordered, listed)


def plan_resume(schedule: Schedule, record: Record) -> None:
    """Drop from ``schedule`` what an earlier run put in DEST.

    Ordered layers: those the record says were applied, as long as every
    file it recorded is unchanged and no earlier layer runs again; else all
    of them. Listed
    files: each on its own, by its recorded signature or its sha256 (a file
    that already holds the image's bytes is recorded: as modelimage's if
    modelimage wrote it, else as adopted, left alone)."""
    if schedule.ordered:
        intact = record.matches and record.intact()
        keep: list[Task] = []
        still = intact
        for t in schedule.tasks:
            if still and t.layer.desc.digest in record.applied:
                schedule.skipped += 1
                continue
            still = False
            keep.append(t)
        schedule.tasks = keep
        if not intact:
            record.applied = []  # every layer again; what it wrote stays the image's (same manifest, same tree)
        return
    keep = []
    for t in schedule.tasks:
        missing = {}
        for rel, f in t.files.items():
            if record.file_ok(rel, f.sha256):
                continue
            full = os.path.join(record.dest, rel)
            if (os.path.isfile(full) and not os.path.islink(full) and os.path.getsize(full) == f.size
                    and hash_file(full) == f.sha256):
                record.put(rel, "file", size=f.size, sha256=f.sha256, adopted=not record.owned(rel))
                continue
            missing[rel] = f
        if not missing:
            schedule.skipped += 1
            continue
        t.files = missing
        t.selection = Selection(t.selection.prefix, t.selection.include, frozenset(missing))
        keep.append(t)
    schedule.tasks = keep
