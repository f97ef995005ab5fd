"""``sign``: attach an OpenSSF Model Signing signature to an image in a
registry (parse, call :func:`modelimage.signing.sign.sign_image`, print)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._output import emit_json, info

if TYPE_CHECKING:
    from ..signing.sign import SignResult


@click.command()
@click.argument("reference", metavar="REF")
@click.option("--key", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="KEY",
              help="EC private key (PEM, P-256) to sign with; an encrypted one reads its password from "
                   "$MODELIMAGE_KEY_PASSWORD.")
@click.option("--platform", metavar="OS/ARCH", help="Which image of a multi-platform index (default: this machine's).")
@click.option("--insecure-registry", multiple=True, metavar="HOST",
              help="Talk plain HTTP to HOST (loopback hosts always are; TLS is verified everywhere else).")
@click.option("--json", "as_json", is_flag=True, help="Print the image and the attached signature as JSON.")
def sign(reference: str, key: Path, platform: str | None, insecure_registry: tuple[str, ...], as_json: bool) -> None:
    """Sign an image in a registry (OpenSSF Model Signing).

    The signature lists every model file with the sha256 the image recorded
    when it was built (the weights are not read again). It is a sigstore
    bundle attached to the image's manifest as an OCI 1.1 referrer (on
    registries without the referrers API, in the referrers tag
    sha256-<digest>). `modelimage verify REF --key PUB` checks it without
    downloading the weights; `modelimage pull` writes it into the pulled
    folder as model.sig, which `python -m model_signing verify key` accepts.
    Prints the signed HOST/REPO@DIGEST.

    \b
    Needs the [sign] extra: pip install 'modelimage[sign]'. Keys:
      openssl ecparam -name prime256v1 -genkey -noout -out key.pem
      openssl ec -in key.pem -pubout -out key.pub
    """
    from ..signing.sign import sign_image

    result = sign_image(reference, key, platform=platform, insecure=frozenset(insecure_registry))
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(result.reference)
    info(describe_attached(result))


def describe_attached(result: SignResult) -> str:
    """One line: what ``sign``/``build --sign`` attached, and where it is listed."""
    parts = []
    if result.signature is not None:
        parts.append(f"signed {result.files} files (signature {result.signature.descriptor.digest[:19]}...)")
    if result.provenance is not None:
        parts.append(f"{'signed' if result.provenance_signed else 'unsigned'} SLSA provenance "
                     f"({result.provenance.descriptor.digest[:19]}...)")
    first = result.signature or result.provenance
    where = f"the referrers tag {first.tag}" if first is not None and first.tag else "the registry's referrers API"
    return f"{result.reference}: " + " and ".join(parts) + f", listed in {where}"


def inspect_image(source: str, as_json: bool) -> bool:
    """``inspect REF``: the image's model facts, files, signatures and
    attestations; False (nothing printed) when REF is an index."""
    from ..signing.describe import describe_image
    from ..units import format_size

    report = describe_image(source, single=True)
    if report is None:
        return False
    if as_json:
        emit_json(report.to_json())
        return True
    facts = report.facts
    lines = [f"{report.reference}  ({report.platform}, {format_size(report.size)} in layers)"]
    for key in ("name", "format", "parameters", "quantization", "source", "revision", "target"):
        if key in facts:
            lines.append(f"  {key:<13} {facts[key]}")
    lines.append(f"  files         {len(report.files)}" + ("" if report.files else " (its layers do not list them)"))
    for path, digest in report.files:
        lines.append(f"    {digest[:19]}...  {path}")
    lines.append(referrers_text(report))
    click.echo("\n".join(lines))
    return True


def referrers_text(report: Any) -> str:
    """The signatures and attestations lines of ``inspect REF`` (a
    :func:`~modelimage.signing.describe.describe_image` report)."""
    lines = []
    signatures = [r for r in report.referrers if r.kind == "signature"]
    attestations = [r for r in report.referrers if r.kind in ("provenance", "attestation")]
    for title, refs in (("signatures", signatures), ("attestations", attestations)):
        lines.append(f"  {title:<13} {len(refs) or 'none'}")
        for r in refs:
            what = r.predicate_type or r.descriptor.artifact_type
            lines.append(f"    {r.descriptor.digest[:19]}...  {r.kind}, {'signed' if r.signed else 'unsigned'}, "
                         f"{r.created or 'undated'}  {what}")
    others = len(report.referrers) - len(signatures) - len(attestations)
    if others:
        lines.append(f"  other referrers {others}")
    return "\n".join(lines)
