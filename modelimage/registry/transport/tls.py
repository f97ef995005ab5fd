"""THE TLS configuration of every registry connection (httpx's and the bulk
``http.client`` reads of :mod:`modelimage.registry.fetch` and the download
probe alike), the way podman and docker trust registries.

Trusted roots, all at once:

- the operating system's store (OpenSSL's default CA file and directory,
  e.g. Debian's ``/etc/ssl/certs``);
- ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` (a hashed directory, ``openssl
  rehash``), added to the OS store rather than replacing it;
- certifi's bundle, only when neither of the above has anything;
- the registry's own folder: ``--cert-dir DIR`` when given, else
  ``/etc/containers/certs.d/HOST[:PORT]/`` and
  ``/etc/docker/certs.d/HOST[:PORT]/`` (containers-certs.d(5), docker's
  "Verify repository client certificates"): ``*.crt`` are CA roots,
  ``*.cert`` with the ``*.key`` of the same name a client certificate.

``verify=False`` (``--tls-verify=false``, skopeo's flag) keeps TLS but
checks neither the chain nor the host name: for a registry you trust on a
network you trust.
"""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path

from ...errors import ConfigError

CERTS_D: tuple[Path, ...] = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))
_cache: dict[tuple, ssl.SSLContext] = {}
_cache_lock = threading.Lock()


def cert_dirs(host: str, cert_dir: Path | None = None, certs_d: tuple[Path, ...] | None = None) -> list[Path]:
    """The folders holding ``host``'s own certificates: ``cert_dir`` alone when
    given, else each ``certs.d/HOST`` that exists (``HOST`` with its port;
    ``certs_d`` defaults to :data:`CERTS_D`)."""
    if cert_dir is not None:
        return [Path(cert_dir)]
    return [d / host for d in (CERTS_D if certs_d is None else certs_d) if (d / host).is_dir()]


def ssl_context(host: str, *, verify: bool = True, cert_dir: Path | None = None,
                certs_d: tuple[Path, ...] | None = None) -> ssl.SSLContext:
    """A client context for ``host`` (``name[:port]``), shared by every
    connection with the same settings (a context is thread-safe).

    Raises :class:`ConfigError` naming the file when a certificate or key in
    the registry's folder cannot be loaded, or ``--cert-dir`` is missing."""
    if cert_dir is not None and not Path(cert_dir).is_dir():
        raise ConfigError(f"--cert-dir {cert_dir}: no such folder")
    folders = cert_dirs(host, cert_dir, certs_d)
    files = tuple(sorted((str(p), p.stat().st_mtime_ns) for d in folders for p in d.iterdir() if p.is_file()))
    key = (verify, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"), files)
    with _cache_lock:
        ctx = _cache.get(key)
        if ctx is None:
            ctx = _cache[key] = _build(verify, folders)
    return ctx


def _build(verify: bool, folders: list[Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # TLS 1.2+, hostname checked, chain required
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        _load_trust(ctx)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for folder in folders:
        for path in sorted(folder.iterdir()):
            try:
                if path.suffix == ".crt" and verify:
                    ctx.load_verify_locations(cafile=str(path))
                elif path.suffix == ".cert":
                    key = path.with_suffix(".key")
                    if not key.exists():
                        raise ConfigError(f"{path}: a client certificate without its key {key.name}")
                    ctx.load_cert_chain(str(path), str(key))
            except (ssl.SSLError, OSError) as e:
                raise ConfigError(f"{path}: not a usable certificate ({getattr(e, 'reason', None) or e})") from None
    return ctx


def _load_trust(ctx: ssl.SSLContext) -> None:
    """The OS store, plus ``SSL_CERT_FILE``/``SSL_CERT_DIR``; certifi when both are empty."""
    paths = ssl.get_default_verify_paths()
    loaded = False
    for cafile, capath in ((paths.openssl_cafile, paths.openssl_capath),
                           (os.environ.get(paths.openssl_cafile_env), os.environ.get(paths.openssl_capath_env))):
        cafile = cafile if cafile and os.path.isfile(cafile) else None
        capath = capath if capath and os.path.isdir(capath) else None
        if cafile or capath:
            ctx.load_verify_locations(cafile=cafile, capath=capath)
            loaded = True
    if not loaded:
        import certifi  # httpx depends on it

        ctx.load_verify_locations(cafile=certifi.where())
