"""``python -m modelimage`` and the ``modelimage`` program (pyproject's
console script): :func:`modelimage.cli.run`."""

import sys


def main() -> None:
    """Load the commands, then run one. Ctrl-C while they load (a second or
    more on a busy machine) is the one line every Ctrl-C is, not a traceback.

    httpx's package imports its own command-line client (``httpx._main``:
    rich with pygments, click) whenever those are installed: ~80 modules
    and 5 MB of every command's memory, never used here. The program (not
    the library: an importer keeps its httpx whole) stops that import, and
    httpx takes its own fallback for it (a stub ``httpx.main``)."""
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None: "not importable"
    try:
        from .cli import run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
