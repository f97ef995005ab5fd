"""``pull`` and ``verify``: parse, call :mod:`modelimage.pull`, print (JSON
on stdout, summary and progress on stderr)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .. import api
from ..pull import DEFAULT_CONCURRENCY, VerifyFailed
from ..registry.fetch import DEFAULT_CONNECTIONS
from ..units import format_seconds, format_size, plural
from ._options import config_option, size_callback, transport_options
from ._output import info, progress, warn


def _pull_options(f: Any) -> Any:
    for deco in reversed([
        click.option("--include", multiple=True, metavar="GLOB",
                     help="Only files matching GLOB (repeatable; *.gguf, config.json, tokenizer*). A glob "
                          "without '/' matches file names anywhere."),
        click.option("--path", "path", metavar="DIR",
                     help="The image folder that becomes DEST (default: the model's folder recorded by "
                          "modelimage, else the whole root filesystem)."),
        click.option("--platform", metavar="OS/ARCH",
                     help="Which image of a multi-platform index (default: this machine's)."),
        click.option("--variant", metavar="NAME",
                     help="Of an index of variants (quantizations), the one named NAME (e.g. q8_0)."),
        click.option("--gpu-memory", callback=size_callback, metavar="SIZE",
                     help="Of an index of variants, the highest-precision one whose GPU-memory estimate fits "
                          "SIZE (e.g. 24GiB); ties go to the smaller. Default: the index's first (default) variant."),
        click.option("--insecure-registry", multiple=True, metavar="HOST",
                     help="Talk plain HTTP to HOST (loopback hosts always are; TLS is verified everywhere else)."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout."),
        config_option,
    ]):
        f = deco(f)
    return transport_options(f)


@click.command()
@click.argument("source", metavar="REF|oci:DIR[:TAG]|oci-archive:FILE[:TAG]")
@click.argument("dest", type=click.Path(file_okay=False))
@_pull_options
@click.option("--concurrency", type=click.IntRange(1, 32), default=DEFAULT_CONCURRENCY, show_default=True,
              help="Blobs fetched at once.")
@click.option("--connections", type=click.IntRange(1, 32), default=None,
              help=f"GETs at once for each big blob: 1 streams it over one connection; more split it into "
                   f"ranged GETs. [default: 1 for a loopback registry, else {DEFAULT_CONNECTIONS}]")
@click.option("--overwrite", is_flag=True,
              help="Replace files in DEST that modelimage did not write where the image has files (without it "
                   "the pull stops before fetching anything and names the path).")
@click.option("--require-signature", "require_signature", type=click.Path(dir_okay=False, path_type=Path),
              metavar="PUB", help="Refuse to pull (before writing anything) unless the image carries an OpenSSF "
                                  "Model Signing signature by this EC public key listing exactly its files; then "
                                  "check every pulled file against it. Needs pip install 'modelimage[sign]'.")
def pull(source: str, dest: str, include: tuple[str, ...], path: str | None, platform: str | None,
         insecure_registry: tuple[str, ...], as_json: bool, concurrency: int, connections: int | None,
         overwrite: bool, variant: str | None, gpu_memory: int | None, require_signature: Path | None) -> None:
    """Put the model files of an image or model artifact into DEST.

    Reads modelimage's images, ModelPack and Docker Model Runner artifacts
    and images other tools built (gzip/zstd layers, whiteouts, a base), from
    a registry or an OCI layout. Blobs are fetched in parallel, big ones over
    several connections, and each layer is applied only once its blob
    matched its digest. DEST/.modelimage-pull.json records what modelimage
    wrote: pulling another version into DEST removes what the old one had
    and the new one lacks; files modelimage did not write are never
    touched. An interrupted pull resumes: what is complete is not fetched
    again (kept in DEST/.modelimage-pull/ until the pull succeeds). When the
    image is signed, a whole-model pull writes the signature as
    DEST/model.sig, which `python -m model_signing verify key DEST
    --signature DEST/model.sig --public_key PUB` checks.
    """
    result = api.pull(source, dest, path=path, include=include, platform=platform, concurrency=concurrency,
                      connections=connections, insecure=insecure_registry, progress=progress, overwrite=overwrite,
                      variant=variant, gpu_memory=gpu_memory, on_variant=info, require_signature=require_signature)
    if require_signature is not None:
        info(f"every pulled file matches the signature by {require_signature}")
    warn(list(result.warnings))
    rate = result.bytes_fetched / result.seconds if result.seconds > 0 else 0.0
    via = f" from {result.served_by}" if result.served_by else ""
    via += f" (a mirror of {result.mirror_of})" if result.mirror_of else ""
    info(f"pulled {plural(len(result.files), 'file')} ({format_size(result.bytes)}) into {result.dest}{via} in "
         f"{format_seconds(result.seconds)}: {format_size(result.bytes_fetched)} fetched at {rate / 1e6:.0f} MB/s; "
         f"{plural(result.layers_fetched, 'layer')} fetched, {result.layers_skipped} skipped")
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))


@click.command("verify")
@click.argument("source", metavar="REF|oci:DIR[:TAG]|oci-archive:FILE[:TAG]")
@click.argument("dest", type=click.Path(file_okay=False), required=False)
@_pull_options
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), metavar="PUB",
              help="Check the image's OpenSSF Model Signing signature with this EC public key, and that the "
                   "manifest's file digests are the signed ones, without downloading a layer. Needs pip "
                   "install 'modelimage[sign]'.")
def verify_command(source: str, dest: str | None, include: tuple[str, ...], path: str | None, platform: str | None,
                   insecure_registry: tuple[str, ...], as_json: bool, variant: str | None,
                   gpu_memory: int | None, key: Path | None) -> None:
    """Check DEST against an image, and/or the image's signature (--key).

    DEST: every file re-hashed and compared with the layers' file lists (or,
    for layers without one, the layer's own bytes); one line per missing,
    extra or changed file (DEST/model.sig, the signature a pull wrote, is
    not extra). --key PUB: the signature is checked from the manifest, the
    config and the referrers alone (the bytes fetched are printed). Exits 1
    on any difference."""
    if dest is None and key is None:
        raise click.UsageError("give DEST (check a folder against the image) and/or --key PUB (check its signature)")
    if key is not None:
        from ..signing.verify import verify_image

        if variant is not None or gpu_memory is not None:
            raise click.UsageError("--key checks one image: give the variant's HOST/REPO@sha256:... instead")
        checked = verify_image(source, key, platform=platform, insecure=frozenset(insecure_registry))
        if as_json and dest is None:
            click.echo(json.dumps(checked.to_json(), indent=2))
        info(f"{checked.reference}: signature by {key} verified; its {plural(len(checked.files), 'file')} are the "
             f"image's ({checked.bytes_fetched} bytes fetched in {checked.requests} requests, "
             f"{'only the file-list layer' if checked.layers_read else 'no layer'})")
        for p in checked.provenance:
            state = "verified" if p["verified"] else f"not verified ({p.get('reason')})"
            info(f"provenance {p['digest'][:19]}...: {state}")
        if dest is None:
            return
        source = checked.reference  # the folder is checked against the image whose signature was checked
    result = api.verify(source, dest, include=include, path=path, platform=platform, insecure=insecure_registry,
                        variant=variant, gpu_memory=gpu_memory)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        for kind, paths in (("missing", result.missing), ("changed", result.changed), ("extra", result.extra)):
            for p in paths:
                click.echo(f"{kind} {p}")
    if not result.ok:
        raise VerifyFailed(f"{result.dest} differs from {source}: {len(result.missing)} missing, "
                           f"{len(result.changed)} changed, {len(result.extra)} extra of {result.checked} files")
    info(f"{result.dest}: all {plural(result.checked, 'file')} match {source}")
