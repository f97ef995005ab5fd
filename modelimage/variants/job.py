"""Every variant of a model entry, inspected and planned.

The entry's job (:func:`modelimage.job.prepare`: its source opened once,
its files listed with the entry's include/exclude, its settings settled)
is split among the variants (:func:`.spec.split_files`); each variant's
files are inspected on their own (its parameters, quantization and GPU
memory are its own) and planned with the entry's settings, the model name
and target shared, small files packed by who holds them
(:mod:`.layers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..inspect import ModelInfo, RemoteFolder, SourceFile, inspect_model
from ..job import Job
from ..plan import Plan
from .layers import group_shared, holders_of
from .select import ANNOTATION_VARIANT, VariantFacts, facts_of
from .spec import Split, VariantSpec, split_files


@dataclass(frozen=True)
class VariantJob:
    """One variant, ready to build: its job (the entry's, with this
    variant's model), its plan, and the facts its index entry carries."""

    spec: VariantSpec
    job: Job
    plan: Plan
    facts: VariantFacts

    @property
    def name(self) -> str:
        return self.spec.name


class _Listed:
    """The files a variant holds, as a folder inspect lists: exactly these."""

    def __init__(self, location: Path | RemoteFolder, files: Sequence[SourceFile]):
        self.location, self.files = location, list(files)

    @property
    def name(self) -> str:
        return self.location.name

    def list_files(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[SourceFile]:
        return list(self.files)


def inspect_variant(job: Job, files: Sequence[str]) -> ModelInfo:
    """The entry's model restricted to ``files`` (paths in the model root),
    inspected on its own; same name and root as the entry's."""
    wanted = set(files)
    listed = _Listed(job.model.root, [f for f in job.model.files if f.name in wanted])
    return replace(inspect_model(listed, name=job.model.name), root=job.model.root)


def prepare_variants(job: Job, specs: Sequence[VariantSpec]) -> list[VariantJob]:
    """Each variant of ``job``'s entry, in order (the first is the default).
    Raises :class:`~modelimage.errors.VariantError` (a variant that matches
    nothing, two that hold the same files) and whatever inspect and plan
    raise for a variant's files."""
    source = job.entry.name or job.model.name
    split: Split = split_files([f.name for f in job.model.files], specs, source)
    order = [s.name for s in specs]
    out = []
    for spec in specs:
        model = inspect_variant(job, split.files[spec.name])
        labels = {**job.image_settings.labels, ANNOTATION_VARIANT: spec.name}
        vjob = replace(job, model=model, image_settings=replace(job.image_settings, labels=labels))
        plan = vjob.plan()
        plan = group_shared(plan, holders_of(plan, split.holders, spec.name), order)
        out.append(VariantJob(spec, vjob, plan, facts_of(model, spec.name)))
    return out
