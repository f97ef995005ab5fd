"""The ``modelimage`` command: parse options, call the library, print.

One module per command group (:mod:`.model` inspect/plan/example-model,
:mod:`.build` build/push, :mod:`.registry` login/limits, :mod:`.pull`
pull/verify, :mod:`.estimate`, :mod:`.render`); shared options in
:mod:`._options`, printing and progress in :mod:`._output`.

Results (digests, JSON) go to stdout so scripts compose; progress and
messages go to stderr. Every :class:`ModelImageError` becomes one line and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import sys

import click
import httpx

from .. import __version__
from ..errors import ModelImageError
from . import build, estimate, model, pull, registry, render, sign
from ._output import err, set_quiet


class _Group(click.Group):
    """Lists each command with its whole first paragraph (click cuts it at ~45 characters)."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            text = cmd.short_help or (cmd.help or "").split("\n\n", 1)[0]
            rows.append((name, " ".join(text.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


QUIET_OPTION = dict(is_flag=True, expose_value=False, is_eager=True, callback=set_quiet,
                    help="Print only results and errors: no progress, no summary lines on stderr.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="modelimage")
@click.option("-q", "--quiet", **QUIET_OPTION)  # type: ignore[call-overload]
def cli() -> None:
    """Pack model weights into deterministic, size-bounded OCI images.

    \b
    modelimage inspect ./llama            what is this model?
    modelimage plan ./llama --max-layer-size 2GB
    modelimage build ./llama -o oci:out/llama:latest
    modelimage build llama-8b-q4          a [models.llama-8b-q4] entry of ./modelimage.toml
    """


for _command in (model.inspect, model.plan, model.example_model, build.build, build.push, registry.login,
                 registry.logout, registry.limits_command, pull.pull, pull.verify_command, estimate.estimate,
                 render.render_command, sign.sign):
    _command.params.append(click.Option(["-q", "--quiet"], **QUIET_OPTION))  # type: ignore[arg-type]
    cli.add_command(_command)


RESUMING = ("pull", "push", "build")  # a rerun skips what an interrupted one finished (blobs, verified files)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code. Every failure is one line on
    stderr: ``error: ...`` for a :class:`ModelImageError` (its exit code),
    click's usage errors (2), ``interrupted; ...`` for Ctrl-C (130)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # make_context/invoke rather than cli.main: click's main echoes an
        # empty line before it turns Ctrl-C into Abort (two lines, not one)
        with cli.make_context("modelimage", args) as ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit as e:  # --help, --version
        return e.exit_code
    except ModelImageError as e:
        err(f"error: {e}")
        return e.exit_code
    except httpx.TransportError as e:  # a network failure outside the retried paths (login, estimate...)
        from ..registry.transport import network_message

        host = e.request.url.netloc.decode("ascii") if getattr(e, "_request", None) is not None else "registry"
        err(f"error: {network_message(host, e)}")
        return 1
    except (KeyboardInterrupt, click.exceptions.Abort):  # Ctrl-C (Abort: click's name for it at a prompt)
        command = next((a for a in args if not a.startswith("-")), "")
        err("interrupted; rerun to resume" if command in RESUMING else "interrupted")
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except BrokenPipeError:  # stdout closed early (`modelimage ... | head`): nothing more to say
        sys.stderr.close()
        return 1
    return 0


def run() -> None:
    """The ``modelimage`` program: :func:`main`, then exit. After Ctrl-C
    (cleanup done, the line printed) it exits at once instead of waiting for
    transfers still blocked in other threads."""
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
