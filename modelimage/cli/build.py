"""``build`` and ``push``: write an image (layout, archive or registry) and
send a built layout to a registry."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import click

from .. import api
from ..artifact import FORMATS
from ..units import format_size, plural
from . import _variants
from ._options import model_args, plan_options, rate_callback, registry_options, source_options, transport_options
from ._output import emit_json, info, progress, pushed, warn1
from .sign import describe_attached


@click.command()
@source_options
@plan_options
@click.option("-o", "--output", metavar="oci:DIR[:TAG]",
              help="Where to write: oci:DIR[:TAG] (an OCI layout folder), oci-archive:FILE[:TAG], or "
                   "docker-daemon:NAME[:TAG] (load it into the Docker or podman engine DOCKER_HOST names, "
                   "streaming; needs modelimage[docker]) (default: oci:build/NAME:TAG).")
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
@_variants.variant_option
@registry_options
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False, path_type=Path), metavar="KEY",
              help="With --push: sign the pushed image (OpenSSF Model Signing, EC private key KEY) and attach "
                   "its SLSA provenance signed with the same key; needs pip install 'modelimage[sign]' "
                   "(see `modelimage sign --help`).")
@click.option("--provenance", is_flag=True,
              help="With --push: attach SLSA v1 provenance (source, settings, file digests) as an OCI referrer, "
                   "unsigned unless --sign is given.")
@transport_options
@click.option("--json", "as_json", is_flag=True, help="Print the result (digest, layers, files) as JSON.")
def build(source: str, output: str | None, push_ref: str | None, as_json: bool, concurrency: int,
          bandwidth: float | None, fmt: str, variants: tuple[str, ...], sign_key: Path | None, provenance: bool,
          **kw: Any) -> None:
    """Build an OCI image of a model, without a Docker daemon.

    Layers are deterministic tars (sorted entries, uid/gid 0, fixed modes,
    mtime from SOURCE_DATE_EPOCH or 0): the same files always give the same
    manifest digest, which is printed on stdout (with --push: the pushed
    HOST/REPO@DIGEST). Registry limits are checked before anything is
    written or uploaded.
    """
    if push_ref is not None and output:
        raise click.UsageError("use either -o/--output or --push, not both")
    if fmt != "image" and kw.get("base"):
        raise click.UsageError(f"--base applies to --format image, not {fmt}")
    built = api.build(source, output, push=push_ref if push_ref is None else (push_ref or True), format=fmt,
                      bandwidth=bandwidth, concurrency=concurrency, progress=progress, on_warning=warn1,
                      variants=variants, sign=sign_key, provenance=provenance, **model_args(kw))
    if not isinstance(built, api.Built):  # a model with variants: an index
        return _variants.report(built, as_json)
    if as_json:
        emit_json(built.to_json())
        return
    actions = [layer.action for layer in built.result.layers]
    if built.engine:
        click.echo(built.reference.removeprefix("docker-daemon:"))
        info(f"loaded {built.reference.removeprefix('docker-daemon:')} into the engine at {built.engine} "
             f"(image ID {built.result.config.digest[:19]}; {plural(len(actions), 'layer')}; "
             f"{format_size(built.size)})")
        return
    click.echo(built.reference if built.tag else built.digest)
    if built.tag:
        info(pushed(built.tag, actions, built.size))
    else:
        done = ", ".join(f"{n} {a}" for a, n in sorted(Counter(actions).items()))
        info(f"wrote {built.reference} ({plural(len(actions), 'layer')}: {done}; {format_size(built.size)})")
    if built.attached is not None:
        info(describe_attached(built.attached))


@click.command()
@click.argument("layout", metavar="oci:DIR[:TAG]|oci-archive:FILE[:TAG]")
@click.argument("reference", metavar="REF")
@registry_options
@transport_options
@click.option("--json", "as_json", is_flag=True, help="Print digest, reference and blobs as JSON.")
def push(layout: str, reference: str, concurrency: int, insecure_registry: tuple[str, ...], as_json: bool) -> None:
    """Push an image from an OCI layout (directory or archive) to a registry.

    Blobs the registry already has are skipped (or mounted from another
    repository we pushed them to); uploads resume where the registry says
    they stopped. Prints HOST/REPO@DIGEST.
    """
    result = api.push(layout, reference, concurrency=concurrency, insecure=insecure_registry, progress=progress)
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(result.reference)
    info(pushed(result.tag, [b["action"] for b in result.layers], result.size))
