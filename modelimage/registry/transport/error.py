"""The registry's error answers, as the distribution spec defines them
(go-containerregistry's ``transport.Error``), and the one line a failed
connection gets.

A :class:`RegistryError` keeps the HTTP status, the spec's error code and
message (the first of the body's ``errors``), the ``Retry-After`` the
registry asked for, and knows whether trying again can help
(:attr:`RegistryError.temporary`).
"""

from __future__ import annotations

import json
import ssl
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from ...errors import ModelImageError

if TYPE_CHECKING:
    import httpx

TEMPORARY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Statuses worth another attempt: timeouts, rate limits, server trouble
(go-containerregistry's ``temporaryStatusCodes``, plus 425 Too Early)."""

TEMPORARY_CODES = frozenset({"TOOMANYREQUESTS", "UNAVAILABLE"})
"""Spec error codes worth another attempt whatever the status (distribution's
``errcode`` registry; go-containerregistry's ``temporaryErrorCodes``)."""

MAX_ERROR_BODY = 64 << 10  # bytes of an error body read at most (go-containerregistry: 64 KiB)


class RegistryError(ModelImageError):
    """An error answer from a registry.

    ``status``: the HTTP status; ``code``/``detail``: the spec's error code
    and message (``""`` when the body had none); ``retry_after``: seconds the
    registry asked to wait, or ``None``. The message is ``WHAT: STATUS CODE:
    MESSAGE``, one line, never a header or a secret.
    """

    def __init__(self, what: str, status: int, code: str = "", message: str = "",
                 retry_after: float | None = None):
        self.status, self.code, self.detail, self.retry_after = status, code, message, retry_after
        text = f"{what}: {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        super().__init__(text)

    @property
    def temporary(self) -> bool:
        """Worth trying again: server trouble, rate limits, timeouts."""
        return self.status in TEMPORARY_STATUS or self.code in TEMPORARY_CODES


def error_from_response(what: str, r: httpx.Response) -> RegistryError:
    """The :class:`RegistryError` for an answer the caller did not expect
    (its body read, or not: then only the status speaks)."""
    import httpx

    code = message = ""
    try:
        body = r.content
    except httpx.ResponseNotRead:  # a streamed answer the caller did not read
        body = b""
    try:
        errors = json.loads(body[:MAX_ERROR_BODY]).get("errors") or [] if body else []
        if errors:
            code = str(errors[0].get("code", ""))
            message = str(errors[0].get("message", ""))
            detail = errors[0].get("detail")
            if detail and isinstance(detail, (str, int, float)):
                message += f" ({detail})"
    except (ValueError, AttributeError, UnicodeDecodeError, TypeError):
        message = r.reason_phrase
    if not message:
        message = r.reason_phrase
    if r.status_code == 401 and not code:
        code = "UNAUTHORIZED"
    return RegistryError(what, r.status_code, code, " ".join(message.split())[:300], retry_after(r.headers))


def retry_after(headers: httpx.Headers | dict) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date; RFC 9110 10.2.3), or ``None``."""
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
        except (TypeError, ValueError):
            return None


def tls_failure(e: BaseException | None) -> bool:
    """A TLS certificate that did not verify (self-signed, wrong host, expired):
    never worth another attempt."""
    while e is not None:
        if isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def network_message(what: str, e: BaseException) -> str:
    """One line for a connection that failed (no request details, no headers)."""
    if tls_failure(e):
        return (f"{what}: the TLS certificate did not verify; fix the certificate (or the CA bundle), or use "
                "--insecure-registry HOST only for a registry you trust on a network you trust")
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{what}: cannot connect ({reason})"
