"""``modelimage.toml``: named models and their settings.

```toml
[models.llama-8b-q4]
source = "hf://bartowski/Meta-Llama-3.1-8B-Instruct-GGUF"
include = ["*Q4_K_M.gguf"]
target = "/models/llama-8b-q4"
max_layer_size = "2GB"
image = "ghcr.io/acme/llama-8b-q4:latest"

[models.my-finetune]
source = "s3://acme-models/llama-ft/v3"
endpoint = "https://fly.storage.tigris.dev"   # S3-compatible stores: R2, Tigris, MinIO

[registries."harbor.acme.com"]   # limits of a registry modelimage cannot know
max_layer_size = "5GB"
```

Relative ``source`` paths are relative to the file's folder.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Self

from .errors import ConfigError, SourceError
from .oci import Platform
from .tarstream import COMPRESSIONS
from .units import parse_size
from .variants.spec import VariantSpec, parse_tables

DEFAULT_CONFIG = "modelimage.toml"
REMOTE_SCHEMES = ("hf://", "s3://")
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_KEYS = {"source", "include", "exclude", "target", "max_layer_size", "image", "platform", "compression", "tag",
         "endpoint", "variants"}


@dataclass(frozen=True, kw_only=True)
class Packing:
    """How to pack a model, as a ``[models.NAME]`` entry gives it and
    command-line options override it: ``include``/``exclude`` globs, the
    folder in the image (``target``), ``max_layer_size`` (bytes), the
    ``platform`` (OS/ARCH[/VARIANT]) and the layer ``compression``.
    Empty or None means "not set here"."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    target: str | None = None
    max_layer_size: int | None = None
    platform: str | None = None
    compression: str | None = None

    def overridden_by(self, other: Packing) -> Self:
        """These settings, with each one ``other`` sets taking precedence."""
        return replace(self, **{f.name: getattr(other, f.name) or getattr(self, f.name) for f in fields(Packing)})


@dataclass(frozen=True)
class ModelEntry(Packing):
    """One model to pack: where it comes from and how to pack it."""

    name: str
    source: str
    image: str | None = None
    tag: str | None = None
    endpoint: str | None = None  # S3-compatible endpoint URL for s3:// sources (else the AWS configuration's)
    variants: tuple[VariantSpec, ...] = ()  # [models.NAME.variants.VARIANT] tables, in file order
    defined_in: str | None = None  # the toml file, for messages

    @property
    def is_remote(self) -> bool:
        return self.source.startswith(REMOTE_SCHEMES)

    @property
    def path(self) -> Path:
        """The local folder or file (hf:// and s3:// resolve through :mod:`modelimage.sources`)."""
        if self.is_remote:
            raise SourceError(f"{self.source}: not a local path (resolve it with modelimage.sources.open_source)")
        return Path(self.source)


@dataclass(frozen=True)
class Config:
    path: Path | None
    models: dict[str, ModelEntry] = field(default_factory=dict)
    registries: dict[str, dict[str, Any]] = field(default_factory=dict)  # [registries."HOST"] limit overrides


def _strings(v: Any, where: str, key: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise ConfigError(f"{where}: {key} must be a string or a list of strings")


def _check_choices(m: dict[str, Any], where: str) -> None:
    """``platform``, ``compression``, ``image``, ``target`` and ``tag`` are
    strings, and the first two valid ones, before anything is read."""
    for key in ("platform", "compression", "image", "target", "tag"):
        if key in m and not isinstance(m[key], str):
            raise ConfigError(f"{where}: {key} must be a string")
    if "platform" in m:
        try:
            Platform.parse(m["platform"])
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if "compression" in m and m["compression"] not in COMPRESSIONS:
        raise ConfigError(f"{where}: compression {m['compression']!r}: choose one of {', '.join(COMPRESSIONS)}")


def _read(path: Path | None) -> tuple[Path | None, dict[str, Any]]:
    """(the file, its TOML) for ``path``, or ``./modelimage.toml`` when it
    exists (else ``(None, {})``); one :class:`ConfigError` line naming the
    file for one that is named and missing, unreadable or not TOML."""
    explicit = path is not None
    path = path or Path(DEFAULT_CONFIG)
    if not path.exists():
        if explicit:
            raise ConfigError(f"{path}: no such file")
        return None, {}
    try:
        return path, tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None


def _registries(data: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    registries = data.get("registries", {})
    if not isinstance(registries, dict) or not all(isinstance(v, dict) for v in registries.values()):
        raise ConfigError(f'{path}: [registries] must hold [registries."HOST"] tables')
    return registries


def load_registries(path: Path | None) -> Config:
    """Only the ``[registries."HOST"]`` tables of ``path`` (or
    ``./modelimage.toml``), for commands that need nothing else (``login``,
    ``pull``, ``push``, ``limits``, the transport options of every command):
    a broken ``[models.NAME]`` entry does not stop them. ``models`` is left
    empty. Raises :class:`ConfigError` naming the file for a missing named
    file, a file that is not TOML, or a ``[registries]`` that is not a table
    of tables (what is inside each table is checked by its reader:
    :mod:`modelimage.registry.mirror`, :mod:`modelimage.limits`)."""
    path, data = _read(path)
    return Config(path, {}, _registries(data, path)) if path is not None else Config(None)


def model_names(path: Path | None) -> frozenset[str]:
    """The NAMEs of the ``[models.NAME]`` tables of ``path`` (or
    ``./modelimage.toml``), their entries not checked: whether a SOURCE
    names a model or an image, without a broken entry of another model
    deciding it. Raises :class:`ConfigError` as :func:`load_registries` does."""
    models = _read(path)[1].get("models", {})
    return frozenset(models) if isinstance(models, dict) else frozenset()


def load_config(path: Path | None) -> Config:
    """Read ``path``, or ``./modelimage.toml`` when it exists (else empty):
    every ``[models.NAME]`` entry checked, and the ``[registries]`` tables."""
    path, data = _read(path)
    if path is None:
        return Config(None)
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"{path}: [models] must be a table of [models.NAME] tables")
    out: dict[str, ModelEntry] = {}
    for name, m in models.items():
        where = f"{path} [models.{name}]"
        if not _NAME_RE.match(name):
            raise ConfigError(f"{where}: names are lowercase letters, digits and . _ - (like image names)")
        if not isinstance(m, dict) or not isinstance(m.get("source"), str):
            raise ConfigError(f"{where}: needs source = \"PATH | hf://ORG/REPO | s3://BUCKET/PREFIX\"")
        unknown = set(m) - _KEYS
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_KEYS))})"
            )
        source = m["source"]
        if not source.startswith(REMOTE_SCHEMES) and not Path(source).is_absolute():
            source = str((path.parent / source))
        size = m.get("max_layer_size")
        endpoint = m.get("endpoint")
        if endpoint is not None and not (isinstance(endpoint, str) and endpoint.startswith(("http://", "https://"))):
            raise ConfigError(f"{where}: endpoint must be an http:// or https:// URL, "
                              "e.g. https://ACCOUNT_ID.r2.cloudflarestorage.com")
        if endpoint is not None and not source.startswith("s3://"):
            raise ConfigError(f"{where}: endpoint applies to s3:// sources only")
        _check_choices(m, where)
        out[name] = ModelEntry(
            name=name,
            source=source,
            include=_strings(m.get("include", []), where, "include"),
            exclude=_strings(m.get("exclude", []), where, "exclude"),
            target=m.get("target"),
            max_layer_size=parse_size(size, what=f"{where} max_layer_size") if size is not None else None,
            image=m.get("image"),
            platform=m.get("platform"),
            compression=m.get("compression"),
            tag=m.get("tag"),
            endpoint=endpoint,
            variants=parse_tables(m["variants"], where) if "variants" in m else (),
            defined_in=str(path),
        )
    return Config(path, out, _registries(data, path))


def resolve(arg: str, config: Config) -> ModelEntry:
    """A SOURCE path, or the NAME of a model in the config."""
    if arg in config.models and not Path(arg).exists():
        return config.models[arg]
    if arg.startswith(REMOTE_SCHEMES) or Path(arg).exists():
        return ModelEntry(name="", source=arg)
    from .registry.reference import looks_like_path

    if looks_like_path(arg):
        raise SourceError(f"{arg}: no such file or folder")
    where = f" (looked in {config.path})" if config.path else f" (no {DEFAULT_CONFIG} here)"
    raise SourceError(f"{arg}: no such file, folder or named model{where}")
