"""Printing: results on stdout, messages and progress on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from ..limits import RegistryLimits
from ..units import format_seconds, format_size


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


def err(msg: str) -> None:
    click.echo(msg, err=True)


def warn1(warning: str) -> None:
    err(f"warning: {warning}")


def warn(warnings: list[str]) -> None:
    for w in warnings:
        warn1(w)


@contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A byte progress bar on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def describe_limits(limits: RegistryLimits) -> str:
    parts = [f"layers up to {format_size(limits.max_layer_size)}" if limits.max_layer_size else "no known layer limit",
             f"manifests up to {format_size(limits.max_manifest_size)}", f"at most {limits.max_layers} layers"]
    if limits.upload_timeout:
        parts.append(f"uploads cut after {format_seconds(limits.upload_timeout)}")
    if not limits.chunked_uploads:
        parts.append("monolithic uploads only")
    return ", ".join(parts)
