"""The project's one error hierarchy.

Every failure a user can cause (bad input, a limit that cannot be met, an
unreadable file) is a :class:`ModelImageError`. The CLI prints its message as
one line and exits non-zero; anything else escaping is a bug.
"""

from __future__ import annotations

from pathlib import Path


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a cancelled CI job, a pod's stop), raised in the
    main thread by the program's handler (:func:`modelimage.__main__.main`)
    as Ctrl-C is, so the same clean-up runs (temporary files, a loopback
    registry started for the command, what a calibration pushed); the
    program then exits 143 (128 + 15) with one line."""


class ModelImageError(Exception):
    """Base class: the message is one line that says what is wrong and, where
    possible, how to fix it."""

    exit_code = 1


class FormatError(ModelImageError):
    """A weight file whose header is truncated, corrupt or unsupported."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SourceError(ModelImageError):
    """A model source that does not exist, is empty, or changed while read."""


class PlanError(ModelImageError):
    """No layer plan satisfies the limits."""


class LayerTooLarge(PlanError):
    """A file (or tensor) that cannot be made to fit the layer size limit."""


class ConfigError(ModelImageError):
    """A bad modelimage.toml or command-line setting."""


class RenderError(ModelImageError):
    """What was asked cannot be rendered (the message says what to do instead)."""


class OutputError(ModelImageError):
    """The destination cannot be written."""


class AuthError(ModelImageError):
    """Credentials missing, wrong or refused; the message never contains the secret."""


class PullError(ModelImageError):
    """A pull that cannot go on: a blob that does not match its digest, a
    destination that cannot be written, a source that is not an image."""


class VerifyFailed(ModelImageError):
    """``verify`` found missing, extra or changed files."""


class UnsafeLayer(ModelImageError):
    """A layer that would write outside the destination, or something unsafe."""


class BadLayer(ModelImageError):
    """A layer that is not what it says it is (not a tar, truncated, ...)."""


class VariantError(ModelImageError):
    """A variant that is not there, badly described, or none that fits the
    GPU memory given."""


class PullConflict(PullError):
    """DEST holds something modelimage did not write where the image has a file."""
