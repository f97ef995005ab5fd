"""``render``: Dockerfiles, a GitHub workflow, a Makefile include and
Kubernetes manifests, from templates/ (:mod:`modelimage.render`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import render as _render
from ._options import job_options, plan_options, size_callback
from ._output import info, warn


def _render_help() -> str:
    kinds = "\n".join(f"  {kind:<20} {text}" for kind, text in _render.KINDS.items())
    return (
        "Render a file other tools read, from the model's plan.\n\n"
        f"\b\nKIND is one of:\n{kinds}\n\n"
        "SOURCE is a model folder, a weight file, or the name of a model in modelimage.toml "
        "(dockerfile, dockerfile-consumer and k8s inspect and plan it; github-action passes it to the "
        "action; makefile makes it the default MODEL). The output goes to stdout, or atomically to -o FILE.\n\n"
        "\b\n"
        "modelimage render dockerfile llama -o Dockerfile   then: podman build -f Dockerfile ./llama\n"
        "modelimage render dockerfile llama --builder docker   COPY --link, for BuildKit\n"
        "modelimage render k8s llama --image ghcr.io/acme/llama:v1 --fallback init-container\n"
        "modelimage render makefile -o modelimage.mk"
    )


@click.command("render", help=_render_help(), short_help="Render a Dockerfile, workflow, Makefile or k8s manifest.")
@click.argument("kind", type=click.Choice(list(_render.KINDS)), metavar="KIND")
@click.argument("source", required=False, metavar="[SOURCE|NAME]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write to FILE (atomically: a temporary file renamed into place) instead of stdout.")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="modelimage.toml with [models.NAME] entries (default: ./modelimage.toml).")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only files matching GLOB (repeatable). A glob without '/' matches file names anywhere.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out files matching GLOB (repeatable).")
@click.option("--name", help="Model name (default: the entry name or the folder name).")
@plan_options
@click.option("--registry", metavar="HOST", help="Plan within this registry's limits (see `modelimage limits`).")
@click.option("--base", metavar="REF",
              help="k8s: the image the model was built on (build --base): for an adapter on its base model's "
                   "image, the server gets the base model with the adapter.")
@click.option("--builder", type=click.Choice(list(_render.BUILDERS)),
              help="dockerfile, dockerfile-consumer: who builds it (the build command in its header; COPY --link "
                   "for docker and buildkit, plain COPY for podman and buildah, which reject --link before "
                   "buildah 1.32). Default: podman or buildah when one is on PATH, else docker.")
@click.option("--no-link", is_flag=True,
              help="dockerfile, dockerfile-consumer: plain COPY instead of COPY --link, whatever the builder.")
@click.option("--image", metavar="REF",
              help="The model image (dockerfile-consumer, k8s) or where the workflow pushes (github-action); "
                   "default: the model's `image` in modelimage.toml.")
@click.option("--serve-image", metavar="IMAGE", default=_render.DEFAULT_SERVE_IMAGE, show_default=True,
              help="k8s, dockerfile-consumer: the inference server's image.")
@click.option("--port", type=click.IntRange(1, 65535), default=_render.DEFAULT_SERVE_PORT, show_default=True,
              help="k8s: the server's port.")
@click.option("--gpus", type=click.IntRange(0, 64), default=1, show_default=True,
              help="k8s: nvidia.com/gpu the server asks for (0: none).")
@click.option("--fallback", type=click.Choice(_render.FALLBACKS),
              help="k8s: for clusters without image volumes (before 1.33): init containers copy the model "
                   "into an emptyDir.")
@click.option("--copier-image", metavar="IMAGE", default=_render.DEFAULT_COPIER_IMAGE, show_default=True,
              help="k8s --fallback init-container: an image with a statically linked /bin/busybox, copied in "
                   "to run the copy inside the FROM-scratch model image.")
@click.option("--action", metavar="OWNER/REPO@REF", default=_render.DEFAULT_ACTION, show_default=True,
              help="github-action: modelimage's action.")
@click.option("--variant", metavar="NAME", help="Of a model with variants: render for this one (its tag, its files).")
@click.option("--gpu-memory", callback=size_callback, metavar="SIZE",
              help="Of a model with variants: the highest-precision one whose GPU-memory estimate fits SIZE "
                   "(the rule `pull --gpu-memory` follows); default: the first variant.")
@click.option("--sign", "sign", is_flag=True,
              help="github-action: sign the pushed image (and its SLSA provenance) with the EC private key in "
                   "the repository secret MODELIMAGE_SIGNING_KEY.")
def render_command(kind: str, source: str | None, output: Path | None, builder: str | None, no_link: bool,
                   image: str | None, serve_image: str, port: int, gpus: int, fallback: str | None,
                   copier_image: str, action: str, variant: str | None, gpu_memory: int | None, sign: bool,
                   **kw: Any) -> None:
    detected = builder is None and kind.startswith("dockerfile")
    if detected:
        builder, found = _render.detect_builder()
    settings = _render.RenderSettings(builder=builder or "docker", link=False if no_link else None, image=image,
                                      dockerfile=str(output) if output else "Dockerfile", serve_image=serve_image,
                                      port=port, gpus=gpus, fallback=fallback, copier_image=copier_image,
                                      action=action, variant=variant, gpu_memory=gpu_memory, sign=sign)
    if source is None and kind != "makefile":
        raise click.UsageError(f"render {kind} needs a SOURCE or NAME")
    rendered = _render.render_model(kind, source, job_options(**kw), settings)
    if detected:
        info(f"rendered for {builder} ({'found on PATH' if found else 'none of podman, buildah, docker on PATH'};"
             " choose with --builder)")
    warn(list(rendered.warnings))
    for note in rendered.notes:
        info(note)
    if output is None:
        click.echo(rendered.text, nl=False)
    else:
        _render.write_atomic(output, rendered.text)
        info(f"wrote {output}")
