"""From a command line (or Python call) to settled settings.

A job is one model to pack: a ``modelimage.toml`` entry or an ad-hoc source,
with command-line options taking precedence over the entry, inspected and
ready to plan. Every command goes through :func:`prepare`, so ``inspect``,
``plan`` and ``build`` always agree on what they look at.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .build import DEFAULT_PLATFORM, ImageSettings, parse_platform, source_date_epoch
from .config import ModelEntry, load_config, resolve
from .errors import ConfigError
from .inspect import ModelInfo, inspect_model
from .plan import DEFAULT_MAX_LAYER_SIZE, Plan, PlanSettings, make_plan, normalize_target
from .tarstream import COMPRESSIONS


@dataclass(frozen=True)
class Options:
    """Command-line overrides; None means "from the config or default"."""

    config: Path | None = None
    name: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    target: str | None = None
    max_layer_size: int | None = None
    platform: str | None = None
    compression: str | None = None
    base_layers: int = 0


@dataclass(frozen=True)
class Job:
    entry: ModelEntry
    model: ModelInfo
    plan_settings: PlanSettings
    image_settings: ImageSettings

    def plan(self) -> Plan:
        return make_plan(self.model, self.plan_settings)


def prepare(arg: str, options: Options = Options()) -> Job:
    """Resolve ``arg`` (a path or a configured name), inspect it, settle settings."""
    entry = resolve(arg, load_config(options.config))
    entry = replace(
        entry,
        include=options.include or entry.include,
        exclude=options.exclude or entry.exclude,
    )
    model = inspect_model(entry.path, name=options.name or entry.name or None,
                          include=entry.include, exclude=entry.exclude)
    compression = options.compression or entry.compression or "none"
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    target = options.target or entry.target or f"/models/{model.name}"
    normalize_target(target)
    epoch = source_date_epoch()
    platform = options.platform or entry.platform or DEFAULT_PLATFORM
    parse_platform(platform)
    plan_settings = PlanSettings(
        max_layer_size=options.max_layer_size or entry.max_layer_size or DEFAULT_MAX_LAYER_SIZE,
        target=target,
        base_layers=options.base_layers,
        mtime=epoch,
        compression=compression,
    )
    return Job(entry, model, plan_settings, ImageSettings(platform=platform, epoch=epoch))
