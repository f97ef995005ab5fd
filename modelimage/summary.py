"""The summary of a build, in Markdown: layers and sizes, the registry's
limits, how long a pull takes.

modelimage's GitHub action runs ``modelimage build ... --json`` and then
``python -m modelimage.summary BUILD_JSON --summary "$GITHUB_STEP_SUMMARY"
--github-output "$GITHUB_OUTPUT"``: the job summary is this module's
Markdown, the action's outputs (``digest``, ``reference``) come from the
same JSON. It is given no credentials, so it cannot print any.
"""

from __future__ import annotations

import json
import posixpath
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from . import templates
from .errors import ConfigError, ModelImageError, OutputError
from .estimate import STANDARD_LINKS, LayerSpec, estimate_pull
from .inspect import ModelInfo
from .limits import DEFAULT, RegistryLimits, limits_for
from .oci import layer_compression
from .pulltime import basis_for
from .registry.reference import Reference
from .units import format_count, format_seconds, format_size, plural

DEFAULT_ENGINE = "containerd"  # what Kubernetes nodes pull with
SHOWN_FILES = 3


@dataclass(frozen=True)
class Check:
    """One line of the limits table: ``ok`` None is for information."""

    what: str
    value: str
    limit: str
    ok: bool | None

    @property
    def mark(self) -> str:
        return {True: "✅", False: "❌", None: "ℹ️"}[self.ok]


def _md(text: str) -> str:
    """Text inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return "`" + _md(text).replace("`", "'") + "`"


def outputs(build: dict[str, Any]) -> dict[str, str]:
    """The action's outputs: ``digest`` and ``reference`` (the pushed
    HOST/REPO@DIGEST, or the OCI layout written)."""
    return {"digest": str(build["digest"]), "reference": str(build.get("reference") or "")}


def registry_of(build: dict[str, Any]) -> str | None:
    """The host a build was pushed to, if it was."""
    tag = build.get("tag")
    return Reference.parse(tag).host if tag else None


def _files_text(paths: list[str], root: str) -> str:
    names = [posixpath.relpath(p, root) if root else p.lstrip("/") for p in paths]
    shown = ", ".join(_code(n) for n in names[:SHOWN_FILES])
    more = len(names) - SHOWN_FILES
    return shown + (f" and {more} more" if more > 0 else "")


def _root(build: dict[str, Any], target: str | None) -> str:
    if target:
        return target
    dirs = [posixpath.dirname(f["path"]) for layer in build.get("layers", []) for f in layer.get("files", [])]
    return posixpath.commonpath(dirs) if dirs else ""


def _checks(sizes: list[int], titles: list[str], limits: RegistryLimits) -> list[Check]:
    checks = []
    largest = max(range(len(sizes)), key=lambda i: sizes[i]) if sizes else None
    if largest is not None:
        value = f"{format_size(sizes[largest])} ({titles[largest]})"
        if limits.max_layer_size is None:
            checks.append(Check("largest layer", value, "no known limit", True))
        else:
            checks.append(Check("largest layer", value, f"{format_size(limits.max_layer_size)} per layer",
                                sizes[largest] <= limits.max_layer_size))
    checks.append(Check("layers", str(len(sizes)), f"{limits.max_layers} per image", len(sizes) <= limits.max_layers))
    if limits.upload_timeout and largest is not None:
        needed = sizes[largest] / limits.upload_timeout
        checks.append(Check("upload time", f"the largest layer needs {format_size(needed)}/s of upload",
                            f"uploads cut after {format_seconds(limits.upload_timeout)}", None))
    if not limits.chunked_uploads:
        checks.append(Check("uploads", "one PUT per layer", "no chunked uploads", None))
    return checks


def _layer_spec(layer: dict[str, Any]) -> LayerSpec:
    size = int(layer["size"])
    compression = layer_compression(layer.get("mediaType", ""))
    if compression == "none":
        return LayerSpec(size)
    unpacked = max(size, sum(int(f.get("size", 0)) for f in layer.get("files", [])))
    return LayerSpec(size, unpacked, compression)


def summarize(build: dict[str, Any], *, model: ModelInfo | None = None, target: str | None = None,
              registry: str | None = None, limits: RegistryLimits | None = None,
              engine: str = DEFAULT_ENGINE) -> str:
    """Markdown for the build ``build`` (``modelimage build --json``)."""
    try:
        layers = list(build["layers"])
        digest = str(build["digest"])
    except (KeyError, TypeError):
        raise ConfigError("the build JSON has no digest or layers: pass the output of `modelimage build --json`") \
            from None
    registry = registry or registry_of(build)
    if limits is None:
        limits = limits_for(registry) if registry else DEFAULT
    root = _root(build, target)
    sizes = [int(layer["size"]) for layer in layers]
    titles = [_files_text([layer["files"][0]["path"]], root).strip("`") if len(layer.get("files", [])) == 1
              else f"{len(layer.get('files', []))} files" for layer in layers]
    rows = [{"number": i, "size": format_size(layer["size"]), "files": _files_text([f["path"] for f in layer["files"]],
                                                                                   root),
             "digest": _code(layer["digest"][:19] + "…"), "action": layer.get("action", "")}
            for i, layer in enumerate(layers, 1)]
    checks = _checks(sizes, titles, limits)
    specs = [_layer_spec(layer) for layer in layers]
    pulls = []
    basis = basis_for(engine)  # the same costs `modelimage estimate` uses: this machine's calibration, or built-in
    disk_bps, cache = basis.disk()
    for link, bps in STANDARD_LINKS.items():
        est = estimate_pull(specs, bandwidth_bps=bps, engine=basis.engine, spread=basis.spread, disk_bps=disk_bps,
                            write_cache_bytes=cache)
        pulls.append({"link": link, "time": format_seconds(est.total_seconds), "disk": format_size(est.disk_bytes),
                      "range": f"{format_seconds(est.low_seconds)} to {format_seconds(est.high_seconds)}"})
    facts = None
    if model is not None:
        kind = model.kind.replace("-", " ")
        facts = {
            "what": f"{model.format}, {kind}" + (f", {model.architecture}" if model.architecture else ""),
            "parameters": f"{format_count(model.parameters)} ({model.parameters:,})" if model.parameters else "-",
            "quantization": model.quantization,
            "vram": format_size(model.vram_bytes),
        }
    name = model.name if model is not None else (posixpath.basename(root) or digest)
    return templates.render(
        "summary",
        name=_md(name),
        reference=_code(str(build.get("reference") or "")),
        digest=_code(digest),
        pushed=bool(build.get("tag")),
        facts=facts,
        total=format_size(sum(sizes)),
        layers_text=plural(len(layers), "layer"),
        root=_code(root or "/"),
        layers=rows,
        registry=_md(registry or "any registry"),
        registry_name=_md(limits.name) if limits.name not in (registry, "registry") else "",
        limits_ok=all(c.ok is not False for c in checks),
        checks=[{"mark": c.mark, "what": c.what, "value": _md(c.value), "limit": _md(c.limit)} for c in checks],
        limits_source=_md(limits.source),
        engine=engine,
        basis=_md(basis.label),
        pulls=pulls,
    )


def _append(path: Path, text: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror})") from None


def _read_build(source: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        data = json.loads(text)
    except OSError as e:
        raise ConfigError(f"{source}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not JSON ({e.msg}); pass the output of `modelimage build --json`") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: not a build result; pass the output of `modelimage build --json`")
    return data


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("build_json", metavar="BUILD_JSON")
@click.option("--model", "model_arg", metavar="SOURCE|NAME",
              help="The model that was built: adds what inspect knows (parameters, quantization, GPU memory).")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
              help="modelimage.toml with [models.NAME] entries and [registries.\"HOST\"] limits.")
@click.option("--registry", metavar="HOST",
              help="Check against this registry's limits (default: where the build pushed, else those of any).")
@click.option("--engine", type=click.Choice(["containerd", "podman", "docker"]), default=DEFAULT_ENGINE,
              show_default=True, help="Who pulls, for the pull-time estimate.")
@click.option("--summary", "summary_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Append the Markdown to FILE (e.g. \"$GITHUB_STEP_SUMMARY\") instead of printing it.")
@click.option("--github-output", type=click.Path(dir_okay=False, path_type=Path),
              help="Append digest=... and reference=... to FILE (\"$GITHUB_OUTPUT\").")
def command(build_json: str, model_arg: str | None, config: Path | None, registry: str | None, engine: str,
            summary_file: Path | None, github_output: Path | None) -> None:
    """Summarize a build as Markdown: layers and sizes, the registry's
    limits, and how long pulling the image takes.

    BUILD_JSON is the output of `modelimage build ... --json` (a file, or -
    for standard input).
    """
    from .config import load_registries
    from .job import Options, prepare

    build = _read_build(build_json)
    model = target = None
    if model_arg:
        try:
            job = prepare(model_arg, Options(config=config))
            model, target = job.model, job.plan_settings.target
        except ModelImageError as e:  # the image is built; a summary without the model's facts will do
            click.echo(f"warning: {e}; summarizing without what inspect knows", err=True)
    overrides = load_registries(config).registries
    host = registry or registry_of(build)
    limits = limits_for(host, overrides) if host else DEFAULT
    text = summarize(build, model=model, target=target, registry=host, limits=limits, engine=engine)
    if summary_file:
        _append(summary_file, text)
    else:
        click.echo(text, nl=False)
    if github_output:
        _append(github_output, "".join(f"{k}={v}\n" for k, v in outputs(build).items()))


def main(argv: list[str] | None = None) -> int:
    try:
        command.main(args=argv, prog_name="python -m modelimage.summary", standalone_mode=False)
    except ModelImageError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
