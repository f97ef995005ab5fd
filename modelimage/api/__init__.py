"""One function per command: what ``modelimage CMD`` does, callable from Python.

Each ``cli/`` command parses its options, calls the function of the same
name here and prints what it returns; the package root exports the same
functions (``modelimage.build(...)``, see :mod:`modelimage`). This is
go-containerregistry's ``crane``: a thin layer over the library modules
that does the wiring (which sink, which client, which limits), never
protocol or format work of its own.

Conventions of every function:

- ``source``: a model folder or weight file, ``hf://ORG/REPO[@REV]``,
  ``s3://BUCKET/PREFIX`` or the name of a ``[models.NAME]`` entry of
  ``modelimage.toml`` (``config``: its path; default ``./modelimage.toml``).
  Images are ``HOST/REPO[:TAG|@DIGEST]`` or ``oci:DIR[:TAG]``.
- Sizes are bytes (``int``), rates bytes per second (``float``), times
  seconds (``float``).
- ``progress``: None, or a function ``(total_bytes, label)`` returning a
  context manager that yields a callback taking byte counts (or None); the
  CLI passes a progress bar on stderr.
- Every failure a user can cause raises a
  :class:`~modelimage.errors.ModelImageError` subclass whose message says
  what to do (``ConfigError``, ``SourceError``, ``FormatError``,
  ``PlanError``/``LayerTooLarge``, ``OutputError``, registry errors,
  ``PullError``...). Nothing is printed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._common import PathLike, Progress
    from ._estimate import EstimateReport, ProbeNeedsTarget, estimate
    from ._model import Planned, inspect, plan
    from ._read import pull, verify
    from ._registry import login
    from ._write import Built, Pushed, build, push

__all__ = ["Built", "EstimateReport", "PathLike", "Planned", "ProbeNeedsTarget", "Progress", "Pushed", "build",
           "estimate", "inspect", "login", "plan", "pull", "push", "verify"]

# name -> the module of this package that defines it, imported when the name is first used: a layout build
# does not load what pull, estimate or login need (issue 20: start-up)
_WHERE = {"PathLike": "_common", "Progress": "_common", "EstimateReport": "_estimate",
          "ProbeNeedsTarget": "_estimate", "estimate": "_estimate", "Planned": "_model", "inspect": "_model",
          "plan": "_model", "pull": "_read", "verify": "_read", "login": "_registry", "Built": "_write",
          "Pushed": "_write", "build": "_write", "push": "_write"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
