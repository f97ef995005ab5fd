"""How every request reaches a registry (go-containerregistry's
``v1/remote/transport``): ONE factory, :class:`Transport`, for the HTTP
client of a registry host, with

- the TLS trust (:mod:`.tls`),
- auth challenges and bearer tokens (:mod:`.bearer`),
- THE retry policy (:mod:`.retry`),
- the spec's error type, :class:`RegistryError`, with ``temporary`` (:mod:`.error`).

Push, pull (including :mod:`modelimage.registry.fetch`'s bulk reads, which
take :attr:`Transport.ssl_context` and :attr:`Transport.retry`), the
download probe and login all go through it. Never prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..keychain import Credentials, credentials_for
from ..reference import Reference, api_url, resolve_location
from .bearer import RegistryAuth
from .error import RegistryError, error_from_response, network_message, retry_after, tls_failure
from .retry import RetriesExhausted, RetryPolicy
from .sockets import InterruptibleTransport
from .tls import ssl_context

__all__ = [
    "RegistryAuth", "RegistryError", "RetriesExhausted", "RetryPolicy", "Transport", "TransportOptions",
    "USER_AGENT", "error_from_response", "network_message", "retry_after", "ssl_context", "tls_failure",
]

USER_AGENT = "modelimage/0.1 (+https://github.com/modelimage)"
DEFAULT_TIMEOUT = 60.0  # seconds to connect, and between bytes of an answer (not for a commit's answer)
DEFAULT_POOL = 8  # idle connections kept per registry


@dataclass(frozen=True)
class TransportOptions:
    """How to reach registries, settled from the command line.

    ``insecure``: hosts spoken to in plain HTTP (``--insecure-registry``);
    ``tls_verify``: ``False`` keeps TLS but checks no certificate
    (``--tls-verify=false``); ``cert_dir``: the registry's certificates
    (``--cert-dir``, instead of ``certs.d``); ``timeout``: seconds;
    ``retry``: the retry policy.
    """

    insecure: frozenset[str] = frozenset()
    tls_verify: bool = True
    cert_dir: Path | None = None
    timeout: float = DEFAULT_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class Transport:
    """The HTTP side of one registry host: an :class:`httpx.Client` (:attr:`http`)
    with docker-style auth, the TLS context (:attr:`ssl_context`), the retry
    policy (:attr:`retry`) and the API's base URL (:attr:`base`).

    ``credentials``: as given, else what the keychain holds for the host.
    ``pool``: idle keep-alive connections; the number of connections open at
    once is not capped, so parallel transfers never queue for one (each
    transfer thread uses one at a time). Close it with :meth:`close`.
    """

    def __init__(self, ref: Reference, options: TransportOptions = TransportOptions(), *,
                 credentials: Credentials | None = None, pool: int = DEFAULT_POOL):
        self.host, self.options, self.retry = ref.host, options, options.retry
        self.base = ref.base_url(options.insecure)
        self.ssl_context = ssl_context(ref.host, verify=options.tls_verify, cert_dir=options.cert_dir)
        creds = credentials if credentials is not None else credentials_for(ref.host)
        # no timeout waiting for the answer to a body we streamed (see body_timeout); connect stays bounded
        self.timeout = httpx.Timeout(options.timeout, read=options.timeout)
        headers = {"User-Agent": USER_AGENT}
        # token servers get the same trust as the registry
        self.token_client = httpx.Client(timeout=options.timeout, headers=headers, follow_redirects=True,
                                         verify=self.ssl_context)
        self.auth = RegistryAuth(ref.host, creds, token_client=self.token_client)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=max(1, pool))
        self._connections = InterruptibleTransport(ssl_context=self.ssl_context, limits=limits)
        self.http = httpx.Client(
            base_url=self.base, auth=self.auth, timeout=self.timeout, follow_redirects=True, headers=headers,
            transport=self._connections,
        )

    def interrupt(self) -> None:
        """Cut every connection of :attr:`http` (from any thread): requests in
        flight fail at once with an httpx transport error (Ctrl-C)."""
        self._connections.interrupt()

    @property
    def body_timeout(self) -> httpx.Timeout:
        """For requests that carry a blob: no read timeout waiting for the
        answer, since registries can take minutes to commit a big blob
        (containerd's 30 s header timeout killed ~2 GB uploads:
        unikraft-cloud/cli#511); connect and pool stay bounded."""
        return httpx.Timeout(self.timeout.connect, read=None, write=self.timeout.write, pool=self.timeout.pool)

    def url(self, path: str) -> str:
        """The absolute URL of an API path (``/v2/...``)."""
        return api_url(self.base, path)

    def resolve(self, location: str) -> str:
        """An absolute URL for a ``Location`` header (registries may send a path only)."""
        return resolve_location(self.base, location)

    def close(self) -> None:
        self.http.close()
        self.token_client.close()
