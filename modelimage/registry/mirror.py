"""Registry mirrors, the way containers' ``registries.conf`` has them
(``[[registry.mirror]]``): in modelimage.toml,

```toml
[registries."ghcr.io"]
mirrors = ["mirror.local:5000", "harbor.local/ghcr-proxy"]

[registries."mirror.local:5000"]   # a mirror is a host like any other
insecure = true                    # (its own TLS trust: certs.d/HOST, --cert-dir)
```

Reads of ``ghcr.io/REPO`` (pull, verify, ``inspect REF``, ``estimate REF``,
``build --base``) try each mirror in turn, under the same repository path
(after the mirror's path prefix, if it has one: Harbor's proxy-cache
projects), and ``ghcr.io`` itself when none has the manifest (unreachable,
refused, a bad certificate, not found, unauthorized). Every request to a
mirror carries ``?ns=ghcr.io``, as containerd's do (distribution-spec,
"Registry Proxying"): mirrors of several registries need it. Pushes never go to a
mirror. A mirror is chosen when an image is opened (a ``HEAD`` of its
manifest): one that fails later fails that read, as in containers/image.
A mirror is trusted like the registry for what a tag names; digests are
checked as ever (a manifest asked for by digest, every blob).

A pull-through cache (CNCF distribution with ``proxy.remoteurl``, Harbor's
proxy cache) or a peer-to-peer engine serving the same API (Dragonfly,
Spegel) is such a mirror. A mirror that failed is skipped for
:data:`SKIP_SECONDS` (for the repository, or for every repository when it
could not be reached), with one warning, so a command that opens an image
several times (a variant preflight, a signature check, the pull) warns once.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, ModelImageError
from .client import MANIFEST_ACCEPT, RegistryClient
from .keychain import Credentials
from .reference import Reference, has_credentials, manifest_path, name_at, redacted, registry_host
from .transport import current_options, network_message

log = logging.getLogger(__name__)

SKIP_SECONDS = 60.0  # a failed mirror is not asked again for this long
PROBE_CONNECT_TIMEOUT = 10.0  # seconds to connect to a mirror (at most the transport's timeout)

Mirrors = tuple[tuple[str, tuple[str, ...]], ...]  # (registry host, (mirror location, ...)), as configured


def parse_location(text: str, where: str) -> tuple[str, str]:
    """``HOST[:PORT][/PREFIX]`` -> ``(host, prefix)`` (``prefix`` ``""`` when
    there is none). Raises :class:`ConfigError` naming ``where``."""
    host, _, prefix = text.strip().partition("/")
    hint = ("; credentials go in the keychain: modelimage login MIRROR" if has_credentials(text)
            else "; write it without a scheme (insecure = true in its own table allows plain HTTP)"
            if "://" in text else "")
    bad = ConfigError(f'{where}: mirror {redacted(text)!r} is not "HOST[:PORT]" or "HOST[:PORT]/PATH" (a registry '
                      f"host, with a dot, a port or localhost){hint}")
    try:
        parsed = Reference.parse(f"{host}/{prefix + '/' if prefix else ''}x")
    except ConfigError:
        raise bad from None
    if parsed.host != host or text != text.strip() or text.endswith("/"):
        raise bad
    return host, prefix


def mirrors_from_config(registries: Mapping[str, Mapping[str, Any]], where: str = "modelimage.toml") -> Mirrors:
    """``(host, (mirror, ...))`` pairs from the ``mirrors`` lists of
    ``[registries."HOST"]`` tables (host spelled as :func:`registry_host`
    does: ``index.docker.io`` is ``docker.io``). Raises :class:`ConfigError`
    naming the table for anything but a list of ``HOST[:PORT][/PATH]`` strings."""
    out = []
    for host, table in registries.items():
        mirrors = table.get("mirrors")
        if mirrors is None:
            continue
        table_name = f'{where} [registries."{redacted(host)}"]'
        named = registry_host(host)
        path = re.sub(r"^[a-z][a-z0-9+.-]*://", "", host.strip(), flags=re.I).partition("/")[2].strip("/")
        try:  # a path would read as a prefix (registries.conf's) but name the whole registry: refused
            valid = not has_credentials(host) and path in ("", "v1", "v2") and \
                Reference.parse(f"{named}/x").host == named
        except ConfigError:
            valid = False
        if not valid:  # else its mirrors would never be used, silently
            raise ConfigError(f'{table_name}: mirrors need a registry host as the table name, "HOST[:PORT]" '
                              "(the registry as references name it, e.g. ghcr.io or docker.io; no path: mirrors serve "
                              "the whole registry)")
        if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
            raise ConfigError(f'{table_name}: mirrors must be a list of "HOST[:PORT]" strings')
        for m in mirrors:
            parse_location(m, table_name)
        out.append((registry_host(host), tuple(mirrors)))
    return tuple(out)


def insecure_from_config(registries: Mapping[str, Mapping[str, Any]], where: str = "modelimage.toml"
                         ) -> frozenset[str]:
    """Hosts whose ``[registries."HOST"]`` table says ``insecure = true``
    (registries.conf's key: certificate not checked, plain HTTP allowed),
    as ``--insecure-registry HOST`` would. Raises :class:`ConfigError` for a
    value that is not a boolean."""
    hosts = set()
    for host, table in registries.items():
        value = table.get("insecure", False)
        if not isinstance(value, bool):
            raise ConfigError(f'{where} [registries."{host}"]: insecure must be true or false')
        if value:
            hosts.add(host)
    return frozenset(hosts)


def candidates(ref: Reference, mirrors: Mirrors) -> list[Reference]:
    """Where to read ``ref`` from, in order: its host's mirrors (the
    repository under each mirror's prefix), then ``ref`` itself."""
    return [r for _, r in _mirrored(ref, mirrors)] + [ref]


def _mirrored(ref: Reference, mirrors: Mirrors) -> list[tuple[str, Reference]]:
    """``(location as configured, reference there)`` for each mirror of ``ref``'s host."""
    host = registry_host(ref.host)
    for registry, listed in mirrors:
        if registry == host:
            out = []
            for location in listed:
                mirror, prefix = parse_location(location, f'[registries."{registry}"]')
                repository = f"{prefix}/{ref.repository}" if prefix else ref.repository
                out.append((location, Reference(mirror, repository, ref.tag, ref.digest)))
            return out
    return []


@dataclass(frozen=True)
class Opened:
    """A client for where ``ref`` is read from: ``served`` is the mirror's
    reference (same tag or digest, the mirror's host and path) or ``ref``."""

    client: RegistryClient
    served: Reference
    ref: Reference

    @property
    def mirror(self) -> bool:
        return self.served != self.ref


_skipped: dict[tuple[str, str], float] = {}  # (mirror location, repository or "") -> until (monotonic)
_lock = threading.Lock()


def _skipping(location: str, ref: Reference) -> bool:
    now = time.monotonic()
    with _lock:
        return any(_skipped.get((location, key), 0.0) > now for key in ("", ref.name))


def _failed(location: str, ref: Reference, whole: bool, reason: str, then: str,
            warn: Callable[[str], None]) -> None:
    """Skip ``location`` for a while (for every repository when ``whole``) and say so once."""
    with _lock:
        _skipped[(location, "" if whole else ref.name)] = time.monotonic() + SKIP_SECONDS
    warn(f"mirror {location} of {ref.host}: {reason}; {then}")


def open_client(ref: Reference, *, insecure: frozenset[str] = frozenset(),
                credentials: Credentials | None = None) -> Opened:
    """A client for the first of :func:`candidates` that answers a ``HEAD``
    of ``ref``'s manifest with 200, under the mirrors of
    :func:`~modelimage.registry.transport.using`'s options; the registry
    itself last, whatever it answers (its errors are the caller's).

    ``credentials`` are the registry's and go to it alone; a mirror gets
    what the keychain holds for the mirror's host. ``insecure``: hosts
    (registry or mirror) whose certificate goes unchecked. A mirror's
    failure goes to the options' ``warn`` (else the log) as one line.
    Raises only what opening the registry itself raises."""
    import httpx

    options = current_options()
    warn = options.warn or log.warning
    mirrored = _mirrored(ref, options.mirrors)
    for i, (location, candidate) in enumerate(mirrored):
        if _skipping(location, ref):
            continue
        after = next((loc for loc, _ in mirrored[i + 1:] if not _skipping(loc, ref)), None)
        then = f"trying mirror {after}" if after else f"reading from {ref.host} itself"
        client = None
        try:
            client = RegistryClient(candidate, insecure=insecure, namespace=registry_host(ref.host))
            connect = min(client.timeout.connect or PROBE_CONNECT_TIMEOUT, PROBE_CONNECT_TIMEOUT)
            r = client.http.head(manifest_path(candidate.repository, candidate.ref),
                                 headers={"Accept": MANIFEST_ACCEPT},
                                 timeout=httpx.Timeout(client.timeout.read, connect=connect))
            if r.status_code == 200:
                log.info("reading %s through the mirror %s", ref, location)
                return Opened(client, candidate, ref)
            _failed(location, ref, False, f"HTTP {r.status_code} for {name_at(candidate.name, candidate.ref)}",
                    then, warn)
        except (httpx.HTTPError, ModelImageError, OSError) as e:
            _failed(location, ref, True, _reason(candidate.host, e), then, warn)
        if client is not None:
            client.close()
    return Opened(RegistryClient(ref, insecure=insecure, credentials=credentials), ref, ref)


def _reason(host: str, e: BaseException) -> str:
    """A mirror's failure in a few words (no request details, no secrets)."""
    text = str(e) if isinstance(e, ModelImageError) else network_message(host, e)
    return text.removeprefix(f"{host}: ")
