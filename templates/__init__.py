"""Jinja templates shipped inside the wheel as ``modelimage.templates``
(Dockerfiles, a GitHub Actions workflow, a Makefile include, Kubernetes
manifests, the build summary), and the one function that renders them.

Templates only lay out what they are given: every value (paths, sizes,
quoted strings, which layers need a stage) is computed in Python
(:mod:`modelimage.render`, :mod:`modelimage.summary`) and passed in plain.
A name a template uses but is not given is an error (``StrictUndefined``),
never an empty string in the output.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import jinja2

SUFFIX = ".j2"


def _source(name: str) -> str | None:
    resource = files(__name__) / name
    return resource.read_text(encoding="utf-8") if resource.is_file() else None


def _json(value: Any) -> str:
    """A JSON string/list/number: a quoted scalar or flow sequence in YAML,
    the exec form of a Dockerfile instruction."""
    return json.dumps(value, ensure_ascii=False)


_ENV = jinja2.Environment(
    loader=jinja2.FunctionLoader(_source),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_ENV.filters["json"] = _json


def kinds() -> list[str]:
    """The template names (``dockerfile``, ``k8s``, ...)."""
    return sorted(r.name[: -len(SUFFIX)] for r in files(__name__).iterdir() if r.name.endswith(SUFFIX))


def render(kind: str, **context: Any) -> str:
    """Render ``templates/KIND.j2`` with ``context``."""
    try:
        template = _ENV.get_template(kind + SUFFIX)
    except jinja2.TemplateNotFound:
        raise KeyError(f"no template {kind!r} (known: {', '.join(kinds())})") from None
    return template.render(**context)
