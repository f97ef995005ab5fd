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

import importlib
import os
import sys

import click

from .. import __version__
from ..errors import ModelImageError, Terminated
from ._output import err, set_quiet

# name -> (module of this package, its click command, the line `modelimage --help` shows: the command's whole
# first paragraph, kept here so that listing the commands imports none of them; a test holds them equal)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "build": ("build", "build", "Build an OCI image of a model, without a Docker daemon."),
    "estimate": ("estimate", "estimate", "Estimate how long pulling a model image takes, and compare it with the "
                 "other ways to ship the same weights."),
    "example-model": ("model", "example_model", "Write a small synthetic model (random weights, real file formats) "
                      "for trying modelimage out: a llama-shaped Hugging Face checkpoint with sharded safetensors, "
                      "the same model as a Q4_K_M GGUF, a diffusers pipeline, or a single-file Stable Diffusion "
                      "checkpoint."),
    "inspect": ("model", "inspect", "Show what a model is: format, parameters, dtypes, quantization, components "
                "and a GPU memory estimate. Reads headers only."),
    "limits": ("registry", "limits_command", "Show what a registry accepts (layer and manifest size, layer count, "
               "upload timeout, chunked uploads) and where each number comes from. Without HOST, every registry "
               "modelimage knows."),
    "login": ("registry", "login", "Store registry credentials where docker keeps them (the configured credential "
              "helper, else ~/.docker/config.json or $DOCKER_CONFIG; --authfile or $REGISTRY_AUTH_FILE when "
              "given), after checking them against the registry. HOST/NAMESPACE stores them for that namespace "
              "only (podman's namespaced logins): repositories under it use them first."),
    "logout": ("registry", "logout", "Forget the stored credentials for HOST (or HOST/NAMESPACE) in every auth "
               "file that has them (podman's auth.json, ~/.docker/config.json or $DOCKER_CONFIG) and in docker's "
               "credential helper, as docker and podman logout do: nothing is found for it afterwards."),
    "plan": ("model", "plan", "Show how a model will be split into layers, without writing anything."),
    "pull": ("pull", "pull", "Put the model files of an image or model artifact into DEST."),
    "push": ("build", "push", "Push an image from an OCI layout (directory or archive) to a registry."),
    "render": ("render", "render_command", "Render a Dockerfile, workflow, Makefile or k8s manifest."),
    "sign": ("sign", "sign", "Sign an image in a registry (OpenSSF Model Signing)."),
    "verify": ("pull", "verify_command", "Check DEST against an image, and/or the image's signature (--key)."),
}

QUIET_OPTION = dict(is_flag=True, expose_value=False, is_eager=True, callback=set_quiet,
                    help="Print only results and errors: no progress, no summary lines on stderr.")


class _Group(click.Group):
    """The commands of :data:`COMMANDS`, each module imported only when one of
    its commands runs or shows its help (click's "lazily loading
    subcommands"): ``modelimage --help`` and a layout build do not pay for
    httpx or jinja2. Lists each command with its whole first paragraph
    (click cuts it at ~45 characters)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS and name not in self.commands:
            module, attr, _ = COMMANDS[name]
            command = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
            command.params.append(click.Option(["-q", "--quiet"], **QUIET_OPTION))  # type: ignore[arg-type]
            self.add_command(command, name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx) if name in COMMANDS]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


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


RESUMING = ("pull", "push", "build")  # a rerun skips what an interrupted one finished (blobs, verified files)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code. Every failure is one line on
    stderr: ``error: ...`` for a :class:`ModelImageError` (its exit code),
    click's usage errors (2), ``interrupted; ...`` for Ctrl-C (130),
    ``terminated; ...`` for SIGTERM (143, :class:`~modelimage.errors.Terminated`)."""
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
    except (KeyboardInterrupt, click.exceptions.Abort) as e:  # Ctrl-C (Abort: click's name for it at a prompt)
        command = next((a for a in args if not a.startswith("-")), "")
        what, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 130)  # SIGTERM: as Ctrl-C
        err(f"{what}; rerun to resume" if command in RESUMING else what)
        return code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except BrokenPipeError:  # stdout closed early (`modelimage ... | head`): nothing more to say
        sys.stderr.close()
        return 1
    except Exception as e:
        httpx = sys.modules.get("httpx")  # only a command that imported it can fail in it
        if httpx is None or not isinstance(e, httpx.TransportError):
            raise
        # a network failure outside the retried paths (login, estimate...)
        from ..registry.transport import network_message

        host = e.request.url.netloc.decode("ascii") if getattr(e, "_request", None) is not None else "registry"
        err(f"error: {network_message(host, e)}")
        return 1
    return 0


def run() -> None:
    """The ``modelimage`` program: :func:`main`, then exit. After Ctrl-C
    or SIGTERM (cleanup done, the line printed) it exits at once instead of waiting for
    transfers still blocked in other threads."""
    code = main()
    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
