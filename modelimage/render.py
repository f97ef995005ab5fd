"""Files other tools read, rendered from a model's plan.

``modelimage render KIND SOURCE|NAME`` and this module's :func:`render_model`
write what a team needs around a model image: a Dockerfile that builds the
same layers with docker or podman, a serving Dockerfile that copies the model
out of its image, a GitHub Actions workflow, a Makefile include and a
Kubernetes Deployment. Everything is computed here, from the same job and
plan that ``modelimage build`` uses; the templates (``templates/*.j2``) only
lay the values out.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from . import templates
from .build import model_facts
from .config import REMOTE_SCHEMES, ModelEntry, load_config, resolve
from .content import FileRange, is_remote
from .errors import ConfigError, OutputError, RenderError
from .image import ANNOTATION_TARGET
from .inspect import VRAM_FACTOR
from .job import Job, Options, prepare
from .plan import Plan
from .registry.reference import Reference
from .serving import server_args, server_kind
from .tarstream import Entry
from .units import format_size, plural
from .variants.build import variant_reference
from .variants.job import pick_variant

KINDS: dict[str, str] = {
    "dockerfile": "FROM scratch, one COPY per planned layer; build context: the model folder",
    "dockerfile-consumer": "a serving image that copies the model out of its image (COPY --from)",
    "github-action": "a workflow that builds and pushes the model with modelimage's action",
    "makefile": "modelimage.mk: model-inspect/plan/build/push/estimate targets, MODEL=...",
    "k8s": "a Deployment mounting the model image as an image volume (or --fallback)",
}
# kinds that inspect and plan the model (its files must be here)
NEEDS_MODEL = ("dockerfile", "dockerfile-consumer", "k8s")
FALLBACKS = ("init-container",)

# Who builds a rendered Dockerfile: its build command, and whether it takes
# COPY --link. BuildKit (docker's builder by default since 23.0, and docker
# buildx) does; podman 4.3 refuses it ("COPY only supports the --chmod,
# --chown and --from flags", ../shared/ENVIRONMENT.md), and so does buildah
# before 1.32.
BUILDERS: dict[str, tuple[str, bool]] = {
    "docker": ("docker build", True),
    "buildkit": ("docker buildx build", True),
    "podman": ("podman build", False),
    "buildah": ("buildah build", False),
}
DEFAULT_SERVE_IMAGE = "vllm/vllm-openai:latest"
DEFAULT_SERVE_PORT = 8000
# The musl variant of the official busybox image is statically linked
# (docker-library/busybox builds it with CONFIG_STATIC=y), so its binary runs
# inside a FROM-scratch model image, which has no libc.
DEFAULT_COPIER_IMAGE = "busybox:1.37-musl"
# This repository's composite action (action.yml at its root).
DEFAULT_ACTION = "modelimage/modelimage@v1"
GHCR = "ghcr.io"
# --fallback init-container: where the static busybox and the model copy are
# mounted in the init container that runs the model image
TOOLS_DIR = "/modelimage-tools"
COPY_DIR = "/modelimage-copy"

# Characters a Dockerfile COPY source cannot carry literally: glob patterns
# (COPY matches sources with filepath.Match) and variable expansion.
_COPY_UNSAFE = re.compile(r"[*?\[\]\\$]")
_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class RenderSettings:
    """What the kinds take besides the model (defaults: the CLI's)."""

    builder: str = "docker"  # who builds the Dockerfiles: a key of BUILDERS
    link: bool | None = None  # COPY --link; None: what the builder takes
    dockerfile: str = "Dockerfile"  # the file's name, for the build command in its header
    image: str | None = None  # the model image (default: the model's `image` in modelimage.toml)
    serve_image: str = DEFAULT_SERVE_IMAGE
    port: int = DEFAULT_SERVE_PORT
    gpus: int = 1
    fallback: str | None = None  # None: image volume; "init-container": for older clusters
    copier_image: str = DEFAULT_COPIER_IMAGE
    action: str = DEFAULT_ACTION
    variant: str | None = None  # of an entry with variants: by name, or
    gpu_memory: int | None = None  # the highest precision that fits (bytes); default: the first
    sign: bool = False  # github-action: sign with the secret MODELIMAGE_SIGNING_KEY


    @property
    def copy_link(self) -> bool:
        """Whether COPY gets --link: asked for, or else what the builder takes."""
        return BUILDERS[self.builder][1] if self.link is None else self.link


@dataclass(frozen=True)
class Rendered:
    text: str
    warnings: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())  # what was chosen and why (a variant)


def detect_builder(path: str | None = None) -> tuple[str, bool]:
    """The builder for a Dockerfile rendered here, and whether it was found
    on ``path`` (default ``$PATH``). podman or buildah when either is there
    (without COPY --link the file builds with docker too), else docker."""
    for name in ("podman", "buildah", "docker"):
        if shutil.which(name, path=path):
            return name, True
    return "docker", False


def render_model(kind: str, source: str | None, options: Options | None = None,
                 settings: RenderSettings | None = None) -> Rendered:
    """Render ``kind`` for the model ``source`` (a path or a modelimage.toml name)."""
    options = options or Options()
    settings = settings or RenderSettings()
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "makefile":
        return Rendered(makefile(source))
    if source is None:
        raise ConfigError(f"render {kind} needs a SOURCE or NAME")
    if kind == "github-action":
        return Rendered(github_workflow(source, options, settings))
    if kind == "dockerfile":  # COPY needs the files in a build context: hf:// is downloaded, not streamed
        options = replace(options, download=True)
    job = prepare(source, options)
    picked = pick_variant(job, settings.variant, settings.gpu_memory)
    job, plan = (picked[0].job, picked[0].plan) if picked else (job, job.plan())
    notes = (f"variant {picked[1].reason}",) if picked else ()
    if kind == "dockerfile":
        return Rendered(dockerfile(job, plan, link=settings.copy_link, builder=settings.builder,
                                   name=settings.dockerfile), notes=notes)
    image = _model_image(job, settings, kind)
    image = variant_reference(image, picked[0].name) if picked else image
    if kind == "dockerfile-consumer":
        return replace(dockerfile_consumer(job, plan, image, settings), notes=notes)
    return Rendered(k8s(job, plan, image, settings), notes=notes)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a synced temporary file renamed
    into place (:func:`modelimage.layout.durable.atomic_write`); raises
    :class:`OutputError` in one line."""
    from .layout.durable import atomic_write

    path = Path(path)
    try:
        atomic_write(path, text.encode("utf-8"))
    except OSError as e:  # the temporary file could not even be made (no such folder, a file in the way)
        raise OutputError(f"{path}: cannot write here ({e.strerror or e})") from None


# ---------------------------------------------------------------- dockerfile


def _source_name(job: Job, e: Entry) -> str | None:
    """The file's path in the build context (the model folder), or None when
    the planned file is not a source file as it is."""
    segs = e.content.segments
    name = e.content.name
    try:
        src = job.model.file(name)
    except StopIteration:
        return None
    if e.size == 0 and src.size == 0:
        return name
    if len(segs) != 1 or not isinstance(segs[0], FileRange):
        return None
    seg = segs[0]
    if seg.offset != 0 or seg.length != src.size or Path(seg.path) != Path(src.path):
        return None
    return name


def _check_plain_copies(job: Job, plan: Plan) -> None:
    """A Dockerfile can only COPY files as they are: refuse plans that reshard."""
    if plan.reshards:
        sources = sorted({s for r in plan.reshards for s in r.sources})
        files = [f for f in job.model.files if f.name in sources]
        largest = max((f.size for f in files), default=0)
        raise RenderError(
            "the plan reshards " + ", ".join(f"{f.name} ({format_size(f.size)})" for f in files)
            + f" to fit {format_size(plan.settings.max_layer_size)} layers, and a Dockerfile can only COPY files "
            "as they are; build with `modelimage build` (it streams the shards into the layers without writing "
            f"them), or render with --max-layer-size {math.ceil((largest + 2**16) / 10**6)}MB"
        )
    odd = [e.content.name for e in plan.files if _source_name(job, e) is None]
    if odd:
        raise RenderError(f"{', '.join(odd)}: generated by the plan, not in the model folder; "
                          "build with `modelimage build`")
    unsafe = [e.content.name for e in plan.files if _COPY_UNSAFE.search(e.content.name)]
    if unsafe:
        raise RenderError(f"{', '.join(unsafe)}: a Dockerfile COPY reads * ? [ ] \\ $ as patterns or variables, "
                          "so these names cannot be copied as they are; rename them or use `modelimage build`")


def _quote(text: str) -> str:
    """A double-quoted Dockerfile word (LABEL keys and values): no variable expansion."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def dockerfile(job: Job, plan: Plan, *, link: bool = True, builder: str = "docker", name: str = "Dockerfile") -> str:
    """A Dockerfile that builds the plan's layers from the model folder with
    ``builder`` (a key of :data:`BUILDERS`); ``name``: the file's own name,
    for the build command in its header."""
    if builder not in BUILDERS:
        raise ConfigError(f"builder {builder!r}: choose one of {', '.join(BUILDERS)}")
    if is_remote(job.model.root):
        raise RenderError(f"{job.model.root}: a Dockerfile copies from a local build context, not from a bucket; "
                          "build with `modelimage build` (it streams the objects into the layers), or download "
                          "the files and render from their folder")
    _check_plain_copies(job, plan)
    target = "/" + plan.settings.root
    copies: list[dict[str, Any]] = []
    stages: list[dict[str, Any]] = []
    for number, layer in enumerate(plan.layers, 1):
        pairs = [(e.content.name, "/" + e.path) for e in layer.entries]
        folders = {str(PurePosixPath(dest).parent) for _, dest in pairs}
        what = pairs[0][0] if len(pairs) == 1 else f"{len(pairs)} files"
        copy: dict[str, Any] = {"number": number, "what": what, "size": format_size(layer.size), "stage": None}
        if len(pairs) == 1:
            copy["args"] = [pairs[0][0], pairs[0][1]]
        elif len(folders) == 1:
            copy["args"] = [src for src, _ in pairs] + [folders.pop().rstrip("/") + "/"]
        else:
            # COPY puts several sources into one folder; files of several
            # folders are gathered in a stage, then copied as one layer.
            stage = f"layer-{number}"
            stages.append({"name": stage, "number": number, "copies": [[src, dest] for src, dest in pairs]})
            copy.update(stage=stage, folders=len(folders))
        copies.append(copy)
    labels = [f"{_quote(k)}={_quote(v)}" for k, v in sorted(model_facts(job.model, target).items())]
    return templates.render(
        "dockerfile",
        name=job.model.name,
        context=str(job.model.root),
        target=target,
        link=link,
        builder=builder,
        build_command=BUILDERS[builder][0],
        dockerfile=name,
        layers_text=plural(len(plan.layers), "layer"),
        total=format_size(plan.total_size),
        max_layer_size=format_size(plan.settings.max_layer_size),
        image=job.entry.image or f"{job.model.name}:latest",
        stages=stages,
        copies=copies,
        labels=labels,
    )


# ---------------------------------------------------------------- consumer


def _model_image(job: Job, settings: RenderSettings, kind: str) -> str:
    image = settings.image or job.entry.image
    if not image:
        raise ConfigError(f"render {kind} needs the model image: pass --image REF, or set image = \"REF\" "
                          f"in [models.{job.entry.name or job.model.name}] of modelimage.toml")
    Reference.parse(image)  # a bad reference fails here, not in the cluster
    return image


def dockerfile_consumer(job: Job, plan: Plan, image: str, settings: RenderSettings) -> Rendered:
    """A serving image that copies the model out of its model image."""
    target = "/" + plan.settings.root
    content = sum(e.size for e in plan.files)
    warnings = []
    if plan.total_size > plan.settings.max_layer_size:
        warnings.append(
            f"COPY --from makes one layer of the whole model ({format_size(plan.total_size)}), over the "
            f"{format_size(plan.settings.max_layer_size)} layer limit; to keep the model's "
            f"{len(plan.layers)} layers, build it onto the server image instead: modelimage build "
            f"{job.entry.name or job.model.name} --base {settings.serve_image}"
        )
    return Rendered(templates.render(
        "dockerfile-consumer",
        name=job.model.name,
        image=image,
        serve_image=settings.serve_image,
        target=target,
        link=settings.copy_link,
        builder=settings.builder,
        build_command=BUILDERS[settings.builder][0],
        dockerfile=settings.dockerfile,
        size=format_size(content),
        layers_text=plural(len(plan.layers), "layer"),
        warnings=warnings,
    ), tuple(warnings))


# ---------------------------------------------------------------- github-action


def _config_for_workflow(options: Options) -> str | None:
    if options.config is not None:
        return str(options.config)
    return "modelimage.toml" if Path("modelimage.toml").is_file() else None


def _model_path_in_repo(source: str, named: bool) -> str | None:
    """The workflow's ``paths`` filter for a local model: its folder's files
    (``DIR/**``) or the weight file, relative to the repository root (the
    working directory). None for ``hf://``/``s3://`` sources, and for a
    named model whose folder is outside the repository (a path given on the
    command line is kept as it was given)."""
    if source.startswith(REMOTE_SCHEMES):
        return None
    rel = Path(os.path.relpath(Path(source).absolute(), Path.cwd())).as_posix()
    if rel == ".." or rel.startswith("../"):
        if named:
            return None
        rel = source
    if Path(source).is_file():
        return rel
    return "**" if rel == "." else f"{rel.rstrip('/')}/**"


def github_workflow(source: str, options: Options, settings: RenderSettings) -> str:
    """A workflow that builds ``source`` and pushes it with this repository's action."""
    config = load_config(options.config)
    entry: ModelEntry = resolve(source, config)
    image = settings.image or entry.image
    if not image:
        raise ConfigError("render github-action needs where to push: pass --image REF, or set image = \"REF\" "
                          f"in [models.{entry.name or 'NAME'}] of modelimage.toml")
    registry = Reference.parse(image).host
    ghcr = registry == GHCR
    # ${{ }} are GitHub expressions, written by the workflow's runner, not here
    username = "${{ github.actor }}" if ghcr else "${{ secrets.REGISTRY_USERNAME }}"
    password = "${{ secrets.GITHUB_TOKEN }}" if ghcr else "${{ secrets.REGISTRY_PASSWORD }}"
    with_inputs = [("model", source)]
    if settings.image:
        with_inputs.append(("image", image))
    if options.max_layer_size:
        with_inputs.append(("max-layer-size", str(options.max_layer_size)))
    with_inputs += [("registry", registry), ("username", username), ("password", password), ("push", "true")]
    config_path = _config_for_workflow(options)
    if config_path:
        with_inputs.append(("config", config_path))
    if settings.sign:  # an EC private key (PEM) in a repository secret; the action deletes its copy
        with_inputs.append(("signing-key", "${{ secrets.MODELIMAGE_SIGNING_KEY }}"))
    paths = [config_path] if config_path else []
    folder = _model_path_in_repo(entry.source, named=bool(entry.name))
    if folder:  # new weights in the model's own folder (or a new weight file) run the workflow too
        paths.append(folder)
    return templates.render(
        "github-action",
        name=entry.name or Path(source).name,
        image=image,
        action=settings.action,
        ghcr=ghcr,
        sign=settings.sign,
        registry=registry,
        inputs=with_inputs,
        paths=paths,
        reference_expr="${{ steps.modelimage.outputs.reference }}",
        digest_expr="${{ steps.modelimage.outputs.digest }}",
    )


# ---------------------------------------------------------------- makefile


def makefile(default_model: str | None = None) -> str:
    """``modelimage.mk``: model-* targets an inference repo includes."""
    return templates.render("makefile", default_model=default_model or "")


# ---------------------------------------------------------------- k8s


def dns_label(name: str) -> str:
    """A Kubernetes object name from a model name: ``Llama_3.1-8B`` -> ``llama-3-1-8b``."""
    label = _DNS_LABEL.sub("-", name.lower()).strip("-")[:63].rstrip("-")
    return label or "model"


def _quantity(n: int) -> str:
    """A Kubernetes quantity at least ``n`` bytes (Mi or Gi)."""
    gib, mib = 2**30, 2**20
    return f"{math.ceil(n / gib)}Gi" if n >= gib else f"{max(1, math.ceil(n / mib))}Mi"


def pull_policy(image: str) -> str:
    """Kubernetes' own default, written out: Always for :latest, else IfNotPresent."""
    ref = Reference.parse(image)
    return "Always" if ref.digest is None and ref.tag == "latest" else "IfNotPresent"


def k8s(job: Job, plan: Plan, image: str, settings: RenderSettings) -> str:
    """A Deployment that serves the model from its image."""
    if settings.fallback not in (None, *FALLBACKS):
        raise ConfigError(f"--fallback {settings.fallback!r}: choose one of {', '.join(FALLBACKS)}")
    model = job.model
    # the image's folder: the plan's, or its base model's when an adapter sits on it (build --base)
    target = "/" + job.image_settings.labels.get(ANNOTATION_TARGET, "/" + plan.settings.root).strip("/")
    name = dns_label(model.name)
    content = sum(e.size for e in plan.files)
    base = None
    if job.base is not None and job.base.target:
        from .pull.layers import layer_file_lists

        lists = layer_file_lists(job.base)
        base = (job.base.target.strip("/"), tuple(f.name for listed in lists if listed for f in listed))
        content += sum(f.size for listed in lists if listed for f in listed)
    if model.parameters:
        vram_rule = f"parameters x {model.bytes_per_parameter:.3g} bytes x {VRAM_FACTOR}"
    else:
        vram_rule = f"weight files x {VRAM_FACTOR}"
    return templates.render(
        "k8s-init-container" if settings.fallback == "init-container" else "k8s",
        name=name,
        model_name=model.name,
        source=job.entry.name or str(job.entry.source),
        image=image,
        pull_policy=pull_policy(image),
        serve_image=settings.serve_image,
        args=server_args(model, plan, serve_image=settings.serve_image, port=settings.port, base=base),
        server=server_kind(settings.serve_image),
        port=settings.port,
        gpus=settings.gpus,
        vram=format_size(model.vram_bytes),
        vram_rule=vram_rule,
        target=target,
        sub_path=target.strip("/"),
        size=format_size(content),
        copier_image=settings.copier_image,
        tools_dir=TOOLS_DIR,
        copy_dir=COPY_DIR,
        copier_command=["/bin/busybox", "cp", "/bin/busybox", f"{TOOLS_DIR}/busybox"],
        copy_command=[f"{TOOLS_DIR}/busybox", "cp", "-R", f"{target}/.", f"{COPY_DIR}/"],
        tools_size="16Mi",
        model_size=_quantity(int(content * 1.1) + 2**20),
    )
