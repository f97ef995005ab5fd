"""A real CNCF distribution registry (Debian's docker-registry) on a
loopback port, for tests. Variants: open, htpasswd basic auth, and bearer
tokens from a token server (added by :mod:`tests.tokenserver`)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .tools import need


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Registry:
    """A running registry: ``host`` is ``127.0.0.1:PORT``."""

    host: str
    root: Path
    proc: subprocess.Popen
    log: Path
    username: str | None = None
    password: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.extra.get('scheme', 'http')}://{self.host}"

    def stop(self) -> None:
        """Stop the registry, then run ``extra["cleanup"]`` (callables, last added first)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        cleanup = self.extra.get("cleanup", [])
        while cleanup:
            cleanup.pop()()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def on_stop(self, fn) -> None:
        """Call ``fn()`` when the registry stops (for helpers started with it)."""
        self.extra.setdefault("cleanup", []).append(fn)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start_registry(auth: dict | None = None, *, username: str | None = None, password: str | None = None,
                   extra_config: dict | None = None, cleanup=(), env: dict[str, str] | None = None,
                   tls: tuple[Path, Path] | None = None) -> Registry:
    """Start ``docker-registry serve`` with a fresh storage folder.

    ``cleanup``: callables run by :meth:`Registry.stop` (also when the start fails).
    ``env``: the registry's environment (default: this process's).
    ``tls``: ``(certificate, key)`` PEM files: the registry serves HTTPS only.
    """
    need("docker-registry")
    root = Path(tempfile.mkdtemp(prefix="registry-"))
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "test-secret-for-upload-state",
                 **({"tls": {"certificate": str(tls[0]), "key": str(tls[1])}} if tls else {})},
        **({"auth": auth} if auth else {}),
        **(extra_config or {}),
    }
    # the registry reads YAML; JSON is YAML
    (root / "config.yml").write_text(json.dumps(config))
    log = root / "registry.log"
    proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env)
    reg = Registry(f"127.0.0.1:{port}", root, proc, log, username, password,
                   {"cleanup": list(cleanup), "scheme": "https" if tls else "http"})
    deadline = time.monotonic() + 20
    while True:
        try:
            r = httpx.get(f"{reg.url}/v2/", timeout=1, verify=False)
            if r.status_code in (200, 401):
                return reg
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            reg.stop()
            pytest.fail(f"docker-registry did not start:\n{reg.logs()}")
        time.sleep(0.1)


def start_htpasswd_registry(username: str = "alice", password: str = "s3cret-pa55word") -> Registry:
    htpasswd = need("htpasswd")
    d = Path(tempfile.mkdtemp(prefix="htpasswd-"))
    subprocess.run([htpasswd, "-Bbc", str(d / "htpasswd"), username, password], check=True, capture_output=True)
    reg = start_registry({"htpasswd": {"realm": "modelimage-test", "path": str(d / "htpasswd")}},
                         username=username, password=password,
                         cleanup=[lambda: shutil.rmtree(d, ignore_errors=True)])
    reg.extra["htpasswd_dir"] = d
    return reg


def start_token_registry(users: dict[str, str] | None = None, *, expires_in: int = 300,
                         grants=None, require_auth: bool = False, exact_expiry: bool = True) -> Registry:
    """A registry that wants bearer tokens from a :class:`tests.tokenserver.TokenServer`
    (like Docker Hub / GHCR).

    ``users`` defaults to ``{"alice": "s3cret-pa55word"}``; the first one is
    ``Registry.username``/``password``. ``grants``/``require_auth``: see
    ``TokenServer``. The server is ``Registry.extra["token_server"]`` (its
    ``requests`` list records every token request) and stops with the registry.

    ``exact_expiry``: distribution accepts tokens 60 s past their ``exp``;
    by default the server backdates the JWT time claims by that leeway so a
    token really stops working ``expires_in`` seconds after it was issued.
    """
    from .tokenserver import REGISTRY_LEEWAY, TokenServer

    need("docker-registry")
    users = dict(users if users is not None else {"alice": "s3cret-pa55word"})
    server = TokenServer(users, grants=grants, expires_in=expires_in, require_auth=require_auth,
                         clock_offset=-REGISTRY_LEEWAY if exact_expiry else 0)
    auth = {"token": {"realm": server.realm, "service": server.service, "issuer": server.issuer,
                      "rootcertbundle": str(server.cert_path)}}
    username, password = next(iter(users.items()), (None, None))
    reg = start_registry(auth, username=username, password=password, cleanup=[server.stop])
    reg.extra["token_server"] = server
    return reg
