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

from ..errors import VariantError
from ..inspect import ModelInfo, RemoteFolder, SourceFile, inspect_model
from ..job import Job, Options, prepare
from ..plan import Plan
from ..units import format_size
from .layers import group_shared, holders_of
from .select import ANNOTATION_VARIANT, Choice, VariantFacts, facts_of, select
from .spec import Split, VariantSpec, split_files


@dataclass(frozen=True)
class VariantJob:
    """One variant, ready to build: its job (the entry's, with this
    variant's model), its plan, and the facts its index entry carries."""

    spec: VariantSpec
    job: Job
    plan: Plan
    facts: VariantFacts
    notes: tuple[str, ...] = ()  # what the build should say (weight files left out of every variant)

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
    notes = tuple(f"{p}: a weight file no variant's include matches; left out of every variant"
                  for p in split.left_out)
    out = []
    for spec in specs:
        model = inspect_variant(job, split.files[spec.name])
        labels = {**job.image_settings.labels, ANNOTATION_VARIANT: spec.name}
        vjob = replace(job, model=model, image_settings=replace(job.image_settings, labels=labels))
        plan = vjob.plan()
        plan = group_shared(plan, holders_of(plan, split.holders, spec.name), order)
        out.append(VariantJob(spec, vjob, plan, facts_of(model, spec.name), notes if not out else ()))
    return out


def inspect_variants(source: str, options: Options) -> list[VariantJob]:
    """``inspect NAME`` of an entry with variants: each variant prepared
    (inspected and planned; nothing written)."""
    job = prepare(source, options)
    return prepare_variants(job, job.entry.variants)


def pick_variant(job: Job, name: str | None = None, gpu_memory: int | None = None
                 ) -> tuple[VariantJob, Choice] | None:
    """For ``render``: the variant of ``job``'s entry that ``name`` or
    ``gpu_memory`` (bytes) picks by :func:`.select.select` (the default,
    first, without either), from the same facts the index carries; None
    for a model without variants (which must then fit ``gpu_memory`` when
    given). Raises :class:`~modelimage.errors.VariantError`."""
    source = job.entry.name or job.model.name
    if not job.entry.variants:
        if name is not None:
            raise VariantError(f"{source}: has no variants ([models.NAME.variants.VARIANT] tables); "
                               f"--variant {name} does not apply")
        if gpu_memory is not None and job.model.vram_bytes > gpu_memory:
            raise VariantError(f"{source}: needs ~{format_size(job.model.vram_bytes)} of GPU memory, more than "
                               f"the {format_size(gpu_memory)} given")
        return None
    variants = prepare_variants(job, job.entry.variants)
    choice = select([v.facts for v in variants], name=name, gpu_memory=gpu_memory, source=source)
    return variants[choice.index], choice
