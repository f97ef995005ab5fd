"""``login``, ``logout`` and ``limits``: credentials for a registry, and what a registry accepts."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import api
from ..config import load_registries
from ..limits import KNOWN, limits_for
from ..registry.keychain import Keychain
from ._options import transport_options
from ._output import describe_limits, emit_json, info


@click.command()
@click.argument("host", metavar="HOST[/NAMESPACE]")
@click.option("-u", "--username", required=True, help="User name.")
@click.option("--password-stdin", is_flag=True, help="Read the password (or token) from standard input.")
@transport_options
def login(host: str, username: str, password_stdin: bool) -> None:
    """Store registry credentials where docker keeps them (the configured
    credential helper, else ~/.docker/config.json or $DOCKER_CONFIG;
    --authfile or $REGISTRY_AUTH_FILE when given), after checking them
    against the registry. HOST/NAMESPACE stores them for that namespace only
    (podman's namespaced logins): repositories under it use them first."""
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True)
    else:
        raise click.UsageError("use --password-stdin to pass a password without a terminal")
    if not password:
        raise click.UsageError("the password is empty")
    where = api.login(host, username, password)
    info(f"login succeeded for {username} at {host}; credentials stored in {where}")


@click.command()
@click.argument("host", metavar="HOST[/NAMESPACE]")
@click.option("--authfile", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Only this auth file (default: podman's auth.json files and ~/.docker/config.json).")
def logout(host: str, authfile: Path | None) -> None:
    """Forget the stored credentials for HOST (or HOST/NAMESPACE) in every
    auth file that has them (podman's auth.json, ~/.docker/config.json or
    $DOCKER_CONFIG) and in docker's credential helper, as docker and podman
    logout do: nothing is found for it afterwards."""
    info(Keychain(authfile).erase(host))


@click.command("limits")
@click.argument("host", required=False)
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="modelimage.toml with [registries.\"HOST\"] overrides (default: ./modelimage.toml).")
@click.option("--json", "as_json", is_flag=True, help="Print the limits as JSON.")
def limits_command(host: str | None, config: Path | None, as_json: bool) -> None:
    """Show what a registry accepts (layer and manifest size, layer count,
    upload timeout, chunked uploads) and where each number comes from.
    Without HOST, every registry modelimage knows."""
    overrides = load_registries(config).registries
    if host:
        table = [(host, limits_for(host, overrides))]
    else:
        table = [(patterns[0], limits_for(patterns[0], overrides)) for patterns, _ in KNOWN]
        table += [(h, limits_for(h, overrides)) for h in overrides]
    if as_json:
        emit_json([{"host": h, **lim.to_json()} for h, lim in table] if not host else {"host": host,
                                                                                        **table[0][1].to_json()})
        return
    for h, lim in table:
        click.echo(f"{h}  ({lim.name})\n  {describe_limits(lim)}\n  source: {lim.source}")
