"""``build`` and ``push``: write an image (layout, archive or registry) and
send a built layout to a registry."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import click

from ..artifact import FORMATS, build_artifact
from ..build import build_image
from ..config import ModelEntry, load_config, resolve
from ..errors import ModelImageError
from ..job import prepare
from ..layout import LayoutRef, open_sink, read_layout
from ..limits import LayerFacts, RegistryLimits, check, limits_for
from ..oci import ANNOTATION_TITLE, Descriptor
from ..registry.client import RegistryClient
from ..registry.push import PushSettings, RegistrySink, push_layout
from ..registry.reference import Reference
from ..units import format_size
from ._options import job_options, plan_options, rate_callback, registry_options, source_options
from ._output import emit_json, err, progress, warn


@click.command()
@source_options
@plan_options
@click.option("-o", "--output", metavar="oci:DIR[:TAG]",
              help="Where to write: oci:DIR[:TAG] (an OCI layout folder) or oci-archive:FILE[:TAG] "
                   "(default: oci:build/NAME:latest).")
@click.option("--push", "push_ref", is_flag=False, flag_value="", default=None, metavar="[REF]",
              help="Push to a registry instead, streaming each layer from the files "
                   "(REF defaults to the model's `image` in modelimage.toml).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="image", show_default=True,
              help="image: a runnable OCI image (tar layers under --target); modelpack: a CNCF ModelPack "
                   "artifact; docker-model: a Docker Model Runner artifact (one raw file per layer).")
@click.option("--base", metavar="REF", help="Put the model on top of this image (REF or oci:DIR[:TAG]).")
@click.option("--platform", metavar="OS/ARCH", help="Platform recorded in the image config (default: linux/amd64).")
@click.option("--bandwidth", callback=rate_callback, metavar="RATE",
              help="Upload bandwidth (e.g. 100Mbit/s), to warn when a layer outlasts a registry's upload timeout.")
@registry_options
@click.option("--json", "as_json", is_flag=True, help="Print the result (digest, layers, files) as JSON.")
def build(source: str, output: str | None, push_ref: str | None, as_json: bool, concurrency: int,
          bandwidth: float | None, fmt: str, **kw: Any) -> None:
    """Build an OCI image of a model, without a Docker daemon.

    Layers are deterministic tars (sorted entries, uid/gid 0, fixed modes,
    mtime from SOURCE_DATE_EPOCH or 0): the same files always give the same
    manifest digest, which is printed on stdout (with --push: the pushed
    HOST/REPO@DIGEST). Registry limits are checked before anything is
    written or uploaded.
    """
    if push_ref is not None and output:
        raise click.UsageError("use either -o/--output or --push, not both")
    ref = None
    if push_ref is not None:
        entry = prepare_entry(source, kw.get("config"))
        text = push_ref or (entry.image if entry else None)
        if not text:
            raise click.UsageError("--push needs a REF (or an `image` for this model in modelimage.toml)")
        ref = Reference.parse(text)
        kw["registry"] = ref.host
    if fmt != "image" and kw.get("base"):
        raise click.UsageError(f"--base applies to --format image, not {fmt}")
    job = prepare(source, job_options(**kw))
    p = job.plan()
    warn(job.preflight(p, bandwidth, fmt))
    if ref is not None:
        sink: Any = RegistrySink(ref, RegistryClient(ref, insecure=frozenset(kw.get("insecure_registry") or ())),
                                 settings=PushSettings(concurrency=concurrency,
                                                       upload="auto" if job.limits.chunked_uploads else "monolithic"))
        reference = str(ref)
    else:
        layout = LayoutRef.parse(output or f"oci:build/{job.model.name}:{job.entry.tag or 'latest'}")
        sink, reference = open_sink(layout), str(layout)
    with progress(p.total_size, f"{'pushing' if ref else 'building'} {job.model.name}") as advance:
        if fmt == "image":
            result = build_image(job.model, p, sink, settings=job.image_settings, reference=reference,
                                 progress=advance, concurrency=concurrency if ref else None, base=job.base)
        else:
            result = build_artifact(job.model, p, sink, format=fmt, settings=job.image_settings,  # type: ignore
                                    reference=reference, progress=advance, concurrency=concurrency if ref else None)
    pinned = f"{ref.name}@{result.manifest.digest}" if ref else None
    if as_json:
        emit_json({**result.to_json(), **({"reference": pinned, "tag": str(ref)} if ref else {})})
        return
    click.echo(pinned or result.manifest.digest)
    actions = Counter(layer.action for layer in result.layers)
    done = ", ".join(f"{n} {a}" for a, n in sorted(actions.items()))
    err(f"{'pushed ' + str(ref) if ref else 'wrote ' + reference} ({len(result.layers)} layers: {done}; "
        f"{format_size(result.size)})")


def prepare_entry(source: str, config: Path | None) -> ModelEntry | None:
    """The modelimage.toml entry SOURCE names, if it names one."""
    try:
        entry = resolve(source, load_config(config))
    except ModelImageError:
        return None
    return entry if entry.name else None


@click.command()
@click.argument("layout", metavar="oci:DIR[:TAG]")
@click.argument("reference", metavar="REF")
@registry_options
@click.option("--json", "as_json", is_flag=True, help="Print digest, reference and blobs as JSON.")
def push(layout: str, reference: str, concurrency: int, insecure_registry: tuple[str, ...], as_json: bool) -> None:
    """Push an image from an OCI layout to a registry.

    Blobs the registry already has are skipped (or mounted from another
    repository we pushed them to); uploads resume where the registry says
    they stopped. Prints HOST/REPO@DIGEST.
    """
    src = LayoutRef.parse(layout)
    if src.transport != "oci":
        raise click.UsageError("push reads an oci:DIR[:TAG] layout")
    ref = Reference.parse(reference)
    limits = limits_for(ref.host, load_config(None).registries)
    desc, manifest = read_layout(src)
    _check_layout(desc, manifest, ref, limits)
    sink = RegistrySink(ref, RegistryClient(ref, insecure=frozenset(insecure_registry)),
                        settings=PushSettings(concurrency=concurrency,
                                              upload="auto" if limits.chunked_uploads else "monolithic"))
    total = sum(int(d["size"]) for d in [manifest.get("config", {}), *manifest.get("layers", [])] if d)
    with progress(total, f"pushing {ref.repository}") as advance:
        pushed = push_layout(src.path, src.tag, sink, advance)
    if as_json:
        emit_json({"reference": pushed.reference, "digest": pushed.digest, "tag": str(ref),
                   "layers": list(pushed.blobs)})
        return
    click.echo(pushed.reference)
    actions = Counter(b["action"] for b in pushed.blobs)
    err(f"pushed {ref} (" + ", ".join(f"{n} {a}" for a, n in sorted(actions.items())) + ")")


def _check_layout(desc: Descriptor, manifest: dict, ref: Reference, limits: RegistryLimits) -> None:
    layers = manifest.get("layers", [])
    check(ref.host, limits, [LayerFacts(d.get("annotations", {}).get(ANNOTATION_TITLE, d["digest"][:19]),
                                        int(d["size"])) for d in layers],
          manifest_size=desc.size)
