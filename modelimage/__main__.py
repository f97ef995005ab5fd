"""``python -m modelimage`` and the ``modelimage`` program (pyproject's
console script): :func:`modelimage.cli.run`."""

import signal
import sys

from .errors import Terminated


def main() -> None:
    """Load the commands, then run one. Ctrl-C while they load (a second or
    more on a busy machine) is the one line every Ctrl-C is, not a traceback.

    httpx's package imports its own command-line client (``httpx._main``:
    rich with pygments, click) whenever those are installed: ~80 modules
    and 5 MB of every command's memory, never used here. The program (not
    the library: an importer keeps its httpx whole) stops that import, and
    httpx takes its own fallback for it (a stub ``httpx.main``)."""
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None: "not importable"
    signal.signal(signal.SIGTERM, _terminated)
    try:
        _ask_the_hub_early(sys.argv[1:])
        from .cli import run
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        sys.stderr.write("terminated\n" if terminated else "interrupted\n")
        sys.exit(143 if terminated else 130)
    run()


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM: :class:`~modelimage.errors.Terminated` in the main thread,
    so clean-up runs as after Ctrl-C; a second SIGTERM while it runs is
    ignored (a supervisor that will not wait sends SIGKILL)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def _ask_the_hub_early(args: list[str]) -> None:
    """``build hf://ORG/REPO[@REV] ...``: the Hub is asked for the commit and
    its files in a background thread while the commands load
    (:func:`modelimage.sources.hubapi.ask_early_url`), so its round trips and the
    TLS trust store's loading overlap the imports. Only an answer that
    succeeded is used; whatever else happens, the build asks again itself
    and reports it as always (so nothing here may fail the program)."""
    command = next((a for a in args if not a.startswith("-")), None)
    url = next((a for a in args if a.startswith("hf://")), None)
    if command != "build" or url is None:
        return
    try:
        from .sources.hubapi import ask_early_url

        ask_early_url(url)
    except Exception:  # noqa: BLE001  (the build asks again, and says what fails)
        pass


if __name__ == "__main__":
    main()
