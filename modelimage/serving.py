"""What an inference server is given, as paths in the image a plan builds.

The model (a folder, or a GGUF file: the first split of a split GGUF, as
llama.cpp loads it, never the unsplit name the image does not hold), its
multimodal projector and its adapters, and the arguments that pass them to
llama.cpp's ``llama-server`` or to vLLM. Pure: from the inspected model and
its plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePosixPath

from .errors import RenderError
from .inspect import ModelInfo
from .plan import Plan
from .units import format_size

__all__ = ["Served", "server_args", "server_kind", "served"]


@dataclass(frozen=True)
class Served:
    """What the server is given, as paths in the image: the model (a folder,
    or a GGUF file: the first split of a split set), its projector and its
    adapters."""

    model: str
    gguf: bool  # the model is a GGUF file
    split: int  # files the model's GGUF is split into (1: whole)
    projector: str | None = None
    adapters: tuple[tuple[str, str, int | None], ...] = ()  # (name, path, rank)
    gguf_adapters: bool = False  # llama.cpp LoRA files (else PEFT folders)


def _planned(plan: Plan, name: str) -> str:
    """The image path of the planned file ``name`` (relative to the model root)."""
    for e in plan.files:
        if e.content.name == name:
            return "/" + e.path
    raise RenderError(f"{name}: not in the plan")  # a bug if this fires


Base = tuple[str, tuple[str, ...]]  # a base model image's folder and files (root-relative paths)


def _from_base(base: Base) -> tuple[str, bool, int, str | None]:
    """(model path, GGUF?, splits, projector) of a base model image, from
    its file lists: its one GGUF model (the first split of a split set),
    else its folder; a GGUF with "mmproj" in its name is the projector."""
    from .formats.gguf import SPLIT_RE  # on first use: it loads the gguf package

    folder, files = base
    top = [f for f in files if PurePosixPath(f).parent == PurePosixPath(folder)]
    ggufs = sorted(f for f in top if f.endswith(".gguf") and "mmproj" not in PurePosixPath(f).name.lower())
    projector = next(("/" + f for f in top if f.endswith(".gguf") and "mmproj" in PurePosixPath(f).name.lower()),
                     None)
    firsts = [f for f in ggufs if not SPLIT_RE.match(PurePosixPath(f).name)
              or SPLIT_RE.match(PurePosixPath(f).name)["no"] == "00001"]  # type: ignore[index]
    if len(firsts) == 1:
        m = SPLIT_RE.match(PurePosixPath(firsts[0]).name)
        return "/" + firsts[0], True, int(m["count"]) if m else 1, projector
    return "/" + folder, False, 1, projector


def served(model: ModelInfo, plan: Plan, base: Base | None = None) -> Served:
    """The paths a server needs, from the plan (so a split GGUF is named by
    its first split, as llama.cpp loads it, never by the unsplit name); for
    an adapter on its base model's image (``build --base``), the model
    comes from ``base``: that image's folder and files."""
    target = "/" + plan.settings.root
    resharded = {src: r for r in plan.reshards for src in r.sources}
    main = [w for w in model.weight_sets if w.kind == "model"]
    path, gguf, split = target, False, 1
    projector = None
    if not main and base is not None:
        path, gguf, split, projector = _from_base(base)
    if len(main) == 1 and main[0].format == "gguf":
        w = main[0]
        r = resharded.get(w.members[0])
        names = list(r.outputs) if r else list(w.members)
        path, gguf, split = _planned(plan, names[0]), True, len(names)
    projector = next((_planned(plan, w.members[0]) for w in model.weight_sets if w.kind == "mmproj"), projector)
    adapters: list[tuple[str, str, int | None]] = []
    gguf_adapters = False
    for w in model.weight_sets:
        if w.kind == "gguf-lora":
            gguf_adapters = True
            adapters.append((PurePosixPath(w.members[0]).stem, _planned(plan, w.members[0]),
                             w.adapter.rank if w.adapter else None))
        elif w.kind == "peft-adapter":
            folder = str(PurePosixPath(_planned(plan, w.members[0])).parent)
            adapters.append((PurePosixPath(w.directory).name or model.name, folder,
                             w.adapter.rank if w.adapter else None))
    return Served(path, gguf, split, projector, tuple(adapters), gguf_adapters)


def server_kind(serve_image: str) -> str:
    """``llama.cpp`` for llama.cpp server images (ggml-org/llama.cpp,
    ``*llama.cpp*``, ``*llama-cpp*``), else ``vllm`` (vLLM's arguments are
    the default)."""
    name = serve_image.lower()
    return "llama.cpp" if any(k in name for k in ("llama.cpp", "llama-cpp", "llamacpp", "llama-server")) else "vllm"


def server_args(model: ModelInfo, plan: Plan, *, serve_image: str, port: int, base: Base | None = None) -> list[str]:
    """The server's arguments: llama.cpp's ``llama-server`` (``-m`` the first
    split, ``--mmproj``, ``--lora``) or vLLM's (``--model``,
    ``--enable-lora --lora-modules NAME=PATH``). vLLM loads only single-file
    GGUF (vLLM docs, "GGUF": merge split files first) and LoRA adapters in
    PEFT's format: anything else is a :class:`RenderError` that says what works."""
    s = served(model, plan, base)
    kind = server_kind(serve_image)
    if kind == "llama.cpp":
        if not s.gguf:
            raise RenderError(f"{serve_image} is a llama.cpp server, which loads GGUF files, and "
                              f"{model.name} has no GGUF model; pick a server for its format with --serve-image")
        if s.adapters and not s.gguf_adapters:
            raise RenderError(f"llama.cpp takes LoRA adapters as GGUF files (--lora), and {s.adapters[0][1]} is a "
                              "PEFT adapter: convert it with llama.cpp's convert_lora_to_gguf.py")
        args = ["-m", s.model, "--host", "0.0.0.0", "--port", str(port), "--alias", model.name]
        if s.projector:
            args += ["--mmproj", s.projector]
        for _, path, _ in s.adapters:
            args += ["--lora", path]
        return args
    if s.gguf and s.split > 1 and not any(w.kind == "model" for w in model.weight_sets):
        raise RenderError(f"vLLM loads only single-file GGUF (vLLM docs, GGUF: merge split files first), and the base "
                          f"model image holds {s.model} split into {s.split} files; serve it with llama.cpp "
                          "(--serve-image ghcr.io/ggml-org/llama.cpp:server, which loads the first split)")
    if s.gguf and s.split > 1:
        largest = max((e.content.size for e in plan.files if e.path.endswith(".gguf")), default=0)
        whole = sum(f.size for f in model.files if f.format == "gguf")
        raise RenderError(
            f"vLLM loads only single-file GGUF (vLLM docs, GGUF: merge split files first), and the plan splits "
            f"{model.name}'s GGUF into {s.split} files (the largest {format_size(largest)}) to fit "
            f"{format_size(plan.settings.max_layer_size)} layers; rerun with --max-layer-size "
            f"{math.ceil((whole + 2**20) / 10**6)}MB to keep it whole, or serve it with llama.cpp "
            "(--serve-image ghcr.io/ggml-org/llama.cpp:server, which loads the first split)"
        )
    if s.adapters and s.gguf_adapters:
        raise RenderError(f"vLLM takes LoRA adapters in PEFT's format (--lora-modules), and {s.adapters[0][1]} is a "
                          "GGUF LoRA; serve it with llama.cpp (--serve-image ghcr.io/ggml-org/llama.cpp:server)")
    args = ["--model", s.model, "--served-model-name", model.name, "--port", str(port)]
    if s.adapters:
        args += ["--enable-lora", "--lora-modules", *(f"{name}={path}" for name, path, _ in s.adapters)]
        ranks = [r for _, _, r in s.adapters if r]
        if ranks and max(ranks) > 16:  # vLLM's --max-lora-rank defaults to 16
            args += ["--max-lora-rank", str(max(ranks))]
    return args
