"""``login``: credentials checked against a registry, then stored."""

from __future__ import annotations

from ..registry.client import RegistryClient
from ..registry.keychain import Credentials, Keychain
from ..registry.reference import Reference
from ..registry.transport import current_options


def login(target: str, username: str, password: str) -> str:
    """Check ``username``/``password`` against the registry of ``target``
    (``HOST`` or ``HOST/NAMESPACE``: ``GET /v2/`` with them, through the
    one transport: TLS trust, auth challenge, retries), then store them
    where docker or podman keeps logins (the configured credential helper,
    else the auth file; ``--authfile``/``REGISTRY_AUTH_FILE`` when given,
    :meth:`~modelimage.registry.keychain.Keychain.store`). Returns where
    they went, as a phrase for a message (never the secret). Raises the registry's error
    (:class:`~modelimage.registry.transport.RegistryError`, e.g. 401 for
    refused credentials: then nothing is stored) or a network error, and
    :class:`~modelimage.errors.AuthError` for an auth file or credential
    helper that cannot store them."""
    ref = Reference(target.split("/", 1)[0], "library/x")
    client = RegistryClient(ref, credentials=Credentials(username, password))
    try:
        client.ping()
    finally:
        client.close()
    return Keychain(current_options().authfile).store(target, username, password)
