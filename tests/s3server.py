"""A local S3-compatible server (moto's server mode) on a loopback port,
for s3:// sources and for the registry's S3 storage driver."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# moto's stand-in credentials; nothing leaves the machine
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "modelimage-test", "AWS_SECRET_ACCESS_KEY": "modelimage-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    server: Any
    env: dict[str, str] = field(default_factory=dict)  # AWS settings a client needs (no endpoint)

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                              aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                              aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def stop(self) -> None:
        self.server.stop()


def start_s3(home: Path) -> S3Server:
    """Start moto's ThreadedMotoServer on a free loopback port. ``home``
    holds empty AWS config files, so nothing of the user's applies."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    (home / "config").write_text("")
    (home / "credentials").write_text("")
    env = {**CREDENTIALS, "AWS_CONFIG_FILE": str(home / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials")}
    return S3Server(f"http://{host}:{port}", server, env)


def set_env(env: dict[str, str]) -> dict[str, str | None]:
    """Put ``env`` into os.environ; return what to restore."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return old


def restore_env(old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
