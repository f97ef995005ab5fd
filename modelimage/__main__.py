"""``python -m modelimage`` and the ``modelimage`` program (pyproject's
console script): :func:`modelimage.cli.run`."""

import sys


def main() -> None:
    """Load the commands, then run one. Ctrl-C while they load (a second or
    more on a busy machine) is the one line every Ctrl-C is, not a traceback."""
    try:
        from .cli import run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
