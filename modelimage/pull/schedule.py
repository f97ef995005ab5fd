"""Which layers a pull fetches, in which groups, and what a resume skips.

:func:`plan_tasks` turns classified layers into tasks (a layer and the part
of it that lands in DEST), leaving out layers that hold nothing selected
and, for modelimage's images on a base, the base's layers. :func:`group`
cuts them into groups that may run at once (layers that list disjoint files)
and layers of unknown content (applied alone, in manifest order).
:func:`plan_resume` drops what an earlier run already put in DEST.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from .layers import Layer, Listed, Selection, paths_overlap
from .state import State, hash_file, signature


@dataclass
class Task:
    """One layer to fetch and apply; ``files`` (DEST-relative -> listing)
    for layers that list their files."""

    layer: Layer
    selection: Selection
    files: dict[str, Listed] = field(default_factory=dict)


@dataclass
class Schedule:
    """The pull, planned: groups of tasks in order, layers skipped, warnings,
    and whether layers must be applied in order (``ordered``)."""

    groups: list[list[Task]]
    skipped: int
    warnings: list[str]
    ordered: bool


def plan_tasks(layers: Sequence[Layer], *, prefix: str, include: tuple[str, ...], ours: bool,
               whole_image: bool, target: str | None) -> Schedule:
    """The tasks for ``layers``: ``ours`` (the image records its target) and
    not ``whole_image`` (no ``--path``) leaves out layers without a file list
    (a base image's)."""
    tasks: list[Task] = []
    warnings: list[str] = []
    skipped = base = 0
    for layer in layers:
        if layer.kind == "other":
            warnings.append(f"layer {layer.index + 1} ({layer.desc.media_type}) is neither a tar "
                            "nor a named file; left out")
            skipped += 1
            continue
        if not layer.known and ours and not whole_image and layer.kind == "tar":
            base += 1  # a base image's layer: the model is in the layers that list their files
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
    overlap = paths_overlap(known_paths)
    ordered = (any(not t.layer.known for t in tasks) or overlap
               or any(rel.rsplit("/", 1)[-1].startswith(".wh.") for rel in known_paths))
    return Schedule(group(tasks, overlap), skipped, warnings, ordered)


def group(tasks: Sequence[Task], overlap: bool) -> list[list[Task]]:
    """Layers that may go at once: runs of layers that list disjoint files,
    cut by every layer of unknown content (applied alone, in order)."""
    groups: list[list[Task]] = []
    run: list[Task] = []
    for t in tasks:
        if t.layer.known and not overlap:
            run.append(t)
            continue
        if run:
            groups.append(run)
            run = []
        groups.append([t])
    if run:
        groups.append(run)
    return groups


def plan_resume(schedule: Schedule, state: State, dest: str, prefix: str, include: tuple[str, ...]) -> None:
    """Drop from ``schedule`` what an earlier run put in ``dest`` (a realpath).

    Ordered layers: those the state says were applied, as long as every file
    it recorded is unchanged and no earlier layer runs again. Disjoint listed
    files: each file on its own, by its recorded signature or its sha256."""
    if not state.matches:
        state.applied = []
    if schedule.ordered:
        intact = state.matches and all(state.file_ok(rel, None, dest) for rel in list(state.files))
        keep: list[list[Task]] = []
        still = intact
        for g in schedule.groups:
            todo = [t for t in g if not (still and t.layer.desc.digest in state.applied)]
            if still and todo:
                still = False
            schedule.skipped += len(g) - len(todo)
            if todo:
                keep.append(todo)
        schedule.groups = keep
        if not intact:
            state.applied = []
            state.files = {}
        return
    if not state.matches:
        state.files = {}
    keep = []
    for g in schedule.groups:
        todo = []
        for t in g:
            missing = {}
            for rel, f in t.files.items():
                if state.file_ok(rel, f.sha256, dest):
                    continue
                full = os.path.join(dest, rel)
                if (os.path.isfile(full) and not os.path.islink(full) and os.path.getsize(full) == f.size
                        and hash_file(full) == f.sha256):
                    state.record(rel, f.size, f.sha256, signature(os.lstat(full)))
                    continue
                missing[rel] = f
            if not missing:
                schedule.skipped += 1
                continue
            t.files = missing
            t.selection = Selection(prefix, include, frozenset(missing))
            todo.append(t)
        if todo:
            keep.append(todo)
    schedule.groups = keep
