"""Options shared by several commands, and the click callbacks that parse
sizes and rates with the library's parsers."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..config import load_registries
from ..errors import ModelImageError
from ..job import Options
from ..registry.mirror import insecure_from_config, mirrors_from_config
from ..registry.push import DEFAULT_CONCURRENCY
from ..registry.transport import TransportOptions, using
from ..tarstream import COMPRESSIONS
from ..units import parse_size
from ._output import warn1


def parsed(parse: Callable[..., Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback that reads an option with one of our parsers
    (sizes, rates), turning its error into click's usage error."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse(value, what=f"--{(param.name or '').replace('_', '-')}")
        except ModelImageError as e:
            raise click.BadParameter(str(e).split(": ", 1)[-1]) from None

    return callback


def _parse_rate(value: str, what: str) -> float:
    from ..units import parse_rate

    return parse_rate(value, what=what)


size_callback = parsed(parse_size)
rate_callback = parsed(_parse_rate)


def source_options(f: Callable) -> Callable:
    """Options shared by every command that reads a model."""
    for deco in reversed([
        click.argument("source"),
        click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
                     help="modelimage.toml with [models.NAME] entries (default: ./modelimage.toml)."),
        click.option("--include", multiple=True, metavar="GLOB",
                     help="Only files matching GLOB (repeatable). A glob without '/' matches file names anywhere."),
        click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out files matching GLOB (repeatable)."),
        click.option("--name", help="Model name (default: the entry name or the folder name)."),
    ]):
        f = deco(f)
    return f


def plan_options(f: Callable) -> Callable:
    for deco in reversed([
        click.option("--max-layer-size", callback=size_callback, metavar="SIZE",
                     help="Largest layer blob, e.g. 500MB, 2GiB or bytes "
                          "(default: 10GB, which every common registry accepts)."),
        click.option("--target", metavar="PATH", help="Where the model lands in the image (default: /models/NAME)."),
        click.option("--compression", type=click.Choice(COMPRESSIONS),
                     help="Layer compression (default: none; weights barely compress)."),
    ]):
        f = deco(f)
    return f


MODEL_ARGS = ("config", "name", "include", "exclude", "target", "max_layer_size", "platform", "compression",
              "registry", "base")


def model_args(kw: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :mod:`modelimage.api` that ``kw`` (a
    command's options from :func:`source_options` and :func:`plan_options`)
    sets; ``--insecure-registry`` becomes ``insecure``."""
    args = {k: kw[k] for k in MODEL_ARGS if k in kw}
    if "insecure_registry" in kw:
        args["insecure"] = kw["insecure_registry"]
    return args


def job_options(**kw: Any) -> Options:
    """The library's :class:`~modelimage.job.Options` from a command's keyword arguments."""
    return Options(
        config=kw.get("config"), name=kw.get("name"), include=tuple(kw.get("include") or ()),
        exclude=tuple(kw.get("exclude") or ()), target=kw.get("target"),
        max_layer_size=kw.get("max_layer_size"), platform=kw.get("platform"), compression=kw.get("compression"),
        registry=kw.get("registry"), base=kw.get("base"), insecure=frozenset(kw.get("insecure_registry") or ()),
    )


def registry_options(f: Callable) -> Callable:
    """Options of every command that talks to a registry."""
    for deco in reversed([
        click.option("--insecure-registry", multiple=True, metavar="HOST",
                     help="Do not check HOST's certificate, and allow plain HTTP (loopback hosts may answer "
                          "in plain HTTP too; TLS is verified everywhere else)."),
        click.option("--concurrency", type=click.IntRange(1, 32), default=DEFAULT_CONCURRENCY, show_default=True,
                     help="Layers uploaded at once."),
    ]):
        f = deco(f)
    return f


def transport_options(f: Callable) -> Callable:
    """``--tls-verify``, ``--cert-dir`` and ``--authfile`` (skopeo's and
    podman's names): every registry request the command makes goes with
    them (and with ``--insecure-registry`` when the command has it), with
    the ``mirrors`` and ``insecure`` of the ``[registries."HOST"]`` tables of
    its ``--config`` (or ./modelimage.toml), and warnings on stderr. A
    ``--config`` the command itself does not take is dropped after that
    (``pull``, ``verify``: see :data:`config_option`)."""
    params = inspect.signature(f).parameters
    takes_config = "config" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

    @functools.wraps(f)
    def wrapper(*args: Any, tls_verify: bool, cert_dir: Path | None, authfile: Path | None, **kw: Any) -> Any:
        config = load_registries(kw.get("config") if takes_config else kw.pop("config", None))  # nothing else
        where = str(config.path or "modelimage.toml")
        insecure = frozenset(kw.get("insecure_registry") or ()) | insecure_from_config(config.registries, where)
        options = TransportOptions(insecure=insecure, tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile,
                                   mirrors=mirrors_from_config(config.registries, where), warn=warn1)
        with using(options):
            return f(*args, **kw)

    for deco in reversed([
        click.option("--tls-verify", type=click.BOOL, default=True, show_default=True, metavar="BOOL",
                     help="Require HTTPS and a verified certificate (false: no check, plain HTTP allowed; "
                          "for a registry you trust on a network you trust)."),
        click.option("--cert-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                     help="The registry's certificates (*.crt CAs, *.cert/*.key client pair), instead of "
                          "/etc/containers/certs.d/HOST and /etc/docker/certs.d/HOST."),
        click.option("--authfile", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
                     help="The only file credentials are read from (and login writes to); default: podman's "
                          "auth.json, then ~/.docker/config.json."),
    ]):
        wrapper = deco(wrapper)
    return wrapper


config_option = click.option(
    "--config", "config", type=click.Path(dir_okay=False, path_type=Path),
    help='modelimage.toml whose [registries."HOST"] tables name registry mirrors (mirrors = ["HOST[:PORT]"], '
         "tried first, the registry itself last) and insecure hosts (default: ./modelimage.toml).")
