"""THE retry policy of every registry request: push, pull, probes, login
(go-containerregistry's ``transport/retry.go``, with ``Retry-After``).

What is worth another attempt (:meth:`RetryPolicy.temporary`): a cut or
refused connection, a timeout, and the registry answers that say so
(:attr:`RegistryError.temporary`: 408, 425, 429, 5xx gateway/server
trouble, ``TOOMANYREQUESTS``, ``UNAVAILABLE``). Never a certificate that did
not verify: it will not verify next time either.

How long to wait (:meth:`RetryPolicy.delay`): ``backoff`` seconds doubled
each attempt, capped at ``max_backoff``, with +-25 % jitter so parallel
transfers do not retry in step; at least what ``Retry-After`` asked
(capped at ``max_retry_after``).
"""

from __future__ import annotations

import errno
import http.client
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ...errors import ModelImageError
from .error import RegistryError, network_message, tls_failure

T = TypeVar("T")
# OS errors about local files, not the network: another attempt cannot help
_LOCAL = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


class RetriesExhausted(ModelImageError):
    """A request that kept failing past the retry budget."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and ``Retry-After``.

    ``retries``: attempts after the first (so ``retries + 1`` in all);
    ``backoff``, ``max_backoff``, ``max_retry_after``: seconds; ``sleep``:
    how to wait (for tests, or a wait that an interrupt ends).
    """

    retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 30.0
    max_retry_after: float = 300.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def temporary(self, e: BaseException) -> bool:
        """Whether another attempt can help after ``e``."""
        import httpx

        if tls_failure(e):
            return False
        if isinstance(e, RegistryError):
            return e.temporary
        if isinstance(e, OSError):
            return not isinstance(e, _LOCAL) and e.errno not in (errno.ENOSPC, errno.EROFS)
        return isinstance(e, (httpx.TransportError, http.client.HTTPException))

    def delay(self, attempt: int, e: BaseException | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.75 + random.random() / 2)
        asked = getattr(e, "retry_after", None)
        if asked is not None:
            delay = max(delay, min(asked, self.max_retry_after))
        return delay

    def wait(self, attempt: int, e: BaseException | None = None) -> None:
        self.sleep(self.delay(attempt, e))

    def call(self, what: str, fn: Callable[[], T], *, on_retry: Callable[[], None] | None = None,
             error: type[ModelImageError] = RetriesExhausted) -> T:
        """``fn()``, tried again while it fails with a temporary error, at most
        :attr:`retries` more times. Raises the registry's own error when it is
        not temporary, else ``error`` (one line: ``WHAT: gave up after N
        attempts (REASON)``). ``on_retry`` is called before each wait."""
        import httpx

        for attempt in range(1, self.retries + 2):
            try:
                return fn()
            except (httpx.TransportError, OSError, http.client.HTTPException, RegistryError) as e:
                if isinstance(e, _LOCAL):
                    raise  # a local file's trouble, not the network's
                if not self.temporary(e) or attempt > self.retries:
                    raise self.gave_up(what, e, attempt, error) from None
                if on_retry is not None:
                    on_retry()
                self.wait(attempt, e)
        raise AssertionError("unreachable")

    def gave_up(self, what: str, e: BaseException | None, attempts: int,
                error: type[ModelImageError] = RetriesExhausted) -> ModelImageError:
        """The error to raise once ``e`` ended the attempts: the registry's
        own answer when it is final, else ``error`` saying how many were made."""
        if isinstance(e, RegistryError) and not e.temporary:
            return e
        if e is not None and tls_failure(e):
            return ModelImageError(network_message(what, e))
        return error(f"{what}: gave up after {attempts} attempt{'s' if attempts > 1 else ''} ({describe(e)})")


def describe(e: BaseException | None) -> str:
    """A failure in a few words, for messages (no request details)."""
    if e is None:
        return "no answer"
    if isinstance(e, ModelImageError):
        return str(e)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
