"""From a command line (or Python call) to settled settings.

A job is one model to pack: a ``modelimage.toml`` entry or an ad-hoc source,
with command-line options taking precedence over the entry, inspected and
ready to plan. Every command goes through :func:`prepare`, so ``inspect``,
``plan``, ``build`` and ``estimate`` always agree on what they look at, and
on the limits of the registry the image is meant for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .build import DEFAULT_PLATFORM, ImageSettings, manifest_size, source_date_epoch
from .config import Config, ModelEntry, Packing, load_config, resolve
from .errors import ConfigError
from .image import ANNOTATION_TARGET, Image
from .inspect import ModelInfo, inspect_model
from .limits import DEFAULT, LayerFacts, RegistryLimits, check, limits_for
from .mutate import base_annotations, load_base
from .oci import Platform
from .plan import DEFAULT_MAX_LAYER_SIZE, Plan, PlanSettings, make_plan, normalize_target
from .sources import OpenedSource, open_source
from .tarstream import COMPRESSIONS


@dataclass(frozen=True)
class Options(Packing):
    """Command-line overrides: the :class:`~modelimage.config.Packing`
    settings (which take precedence over the entry's) and what only a
    command line says; None means "from the config or default"."""

    config: Path | None = None
    name: str | None = None
    base_layers: int = 0
    registry: str | None = None  # host whose limits apply (the push target, or plan --registry)
    base: str | None = None  # REF or oci:DIR[:TAG] of a base image
    insecure: frozenset[str] = frozenset()
    download: bool = False  # hf:// files downloaded into the Hugging Face cache (a build context), not streamed


@dataclass(frozen=True)
class Job:
    entry: ModelEntry
    model: ModelInfo
    plan_settings: PlanSettings
    image_settings: ImageSettings
    config: Config
    registry: str | None = None
    limits: RegistryLimits = DEFAULT
    base: Image | None = None  # the base image (--base), read: manifest and config
    source: OpenedSource | None = None  # where the files came from (hf:// commit, s3:// prefix)

    def plan(self) -> Plan:
        return make_plan(self.model, self.plan_settings)

    def preflight(self, plan: Plan, upload_bps: float | None = None, format: str = "image") -> list[str]:
        """Refuse what the registry (or, with none, any engine) would reject
        before anything is written or uploaded; return warnings."""
        if format != "image":
            from .artifact import artifact_manifest_size, plan_artifact

            layers = plan_artifact(self.model, plan, format, epoch=self.image_settings.epoch)  # type: ignore[arg-type]
            facts = [LayerFacts(layer.title, layer.stream.size) for layer in layers]
            size = artifact_manifest_size(self.model, plan, format, self.image_settings)  # type: ignore[arg-type]
        else:
            facts = [LayerFacts(layer.title, layer.size) for layer in plan.layers]
            size = manifest_size(self.model, plan, self.image_settings, self.base)
        return check(self.registry or "the image", self.limits, facts, manifest_size=size,
                     base_layers=len(self.base.layers) if self.base else 0, upload_bps=upload_bps)


def prepare(arg: str, options: Options = Options()) -> Job:
    """Resolve ``arg`` (a path or a configured name), inspect it, settle settings."""
    config = load_config(options.config)
    entry = resolve(arg, config).overridden_by(options)
    source = open_source(entry, download=options.download)
    model = inspect_model(source.location, name=options.name or entry.name or source.name,
                          include=entry.include, exclude=entry.exclude)
    compression = entry.compression or "none"
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    epoch = source_date_epoch()
    asked = entry.platform
    platform = asked or DEFAULT_PLATFORM
    Platform.parse(platform)
    base = load_base(options.base, platform, insecure=options.insecure, strict=asked is not None) \
        if options.base else None
    labels = dict(source.labels)
    target = entry.target or f"/models/{model.name}"
    if base is not None:
        platform = str(base.platform)
        labels.update(base_annotations(base))
        if model.kind == "adapter" and base.target and not entry.target:
            # an adapter on its base model's image: beside the model, and the image's folder stays the base's,
            # so that a pull yields both
            target = f"/{base.target.strip('/')}/adapters/{model.name}"
            labels[ANNOTATION_TARGET] = "/" + base.target.strip("/")
    normalize_target(target)
    limits = limits_for(options.registry, config.registries) if options.registry else DEFAULT
    explicit = entry.max_layer_size
    default = min(DEFAULT_MAX_LAYER_SIZE, limits.max_layer_size or DEFAULT_MAX_LAYER_SIZE)
    plan_settings = PlanSettings(
        max_layer_size=explicit or default,
        target=target,
        max_layers=limits.max_layers,
        base_layers=options.base_layers + (len(base.layers) if base else 0),
        mtime=epoch,
        compression=compression,
    )
    settings = ImageSettings(platform=platform, epoch=epoch, labels=labels)
    return Job(entry, model, plan_settings, settings, config, options.registry, limits, base, source)
