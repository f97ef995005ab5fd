"""Printing: results on stdout, messages and progress on stderr."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from ..limits import RegistryLimits
from ..units import format_seconds, format_size, plural

QUIET = "modelimage.quiet"  # a key of click's ctx.meta, shared by the group and its commands


def set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """Callback of -q/--quiet (on the group and on every command)."""
    if value:
        ctx.meta[QUIET] = True


def quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(QUIET))


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


def err(msg: str) -> None:
    click.echo(msg, err=True)


def info(msg: str) -> None:
    """A message about what was done (stderr), left out with -q/--quiet."""
    if not quiet():
        err(msg)


def warn1(warning: str) -> None:
    err(f"warning: {warning}")


def warn(warnings: list[str]) -> None:
    for w in warnings:
        warn1(w)


@contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A byte progress bar on stderr when it is a terminal (and not -q); nothing otherwise."""
    if not sys.stderr.isatty() or quiet():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def pushed(tag: str, actions: list[str], size: int) -> str:
    """The one summary of a push (``build --push`` and ``push``): the tag,
    the layers by what happened to each, the bytes of the image."""
    counts = Counter(actions)
    done = ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
    return f"pushed {tag} ({plural(len(actions), 'layer')}: {done}; {format_size(size)})"


def describe_limits(limits: RegistryLimits) -> str:
    parts = [f"layers up to {format_size(limits.max_layer_size)}" if limits.max_layer_size else "no known layer limit",
             f"manifests up to {format_size(limits.max_manifest_size)}", f"at most {limits.max_layers} layers"]
    if limits.upload_timeout:
        parts.append(f"uploads cut after {format_seconds(limits.upload_timeout)}")
    if not limits.chunked_uploads:
        parts.append("monolithic uploads only")
    return ", ".join(parts)
