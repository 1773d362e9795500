"""The ``edgekit`` command line: parse options, call the library, print the result.

Each command lives in a module of its own under edgekit/cli and imports the library inside
the command, so ``edgekit --help`` stays fast and never imports torch, openvino or tensorrt.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from edgekit import env
from edgekit.cli import build, compile, exits, listing, lowbit, measure, report
from edgekit.cli.console import console, err_console
from edgekit.errors import EdgekitError

app = typer.Typer(
    name="edgekit",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Take trained transformer encoders to edge devices: export, compile, profile, eval.",
)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from edgekit import __version__
        from edgekit.deps import version_of

        runtimes = ", ".join(f"{n} {v}" for n in ("onnxruntime", "openvino", "tensorrt", "torch") if (v := version_of(n)))
        console.print(
            f"edgekit {__version__} ({runtimes or 'no runtime installed'}); Python {sys.version.split()[0]}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for user errors too")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print edgekit's and the runtimes' versions")
    ] = False,
) -> None:
    _state["debug"] = debug or env.debug()


compile.register(app)
measure.register(app)
listing.register(app)
lowbit.register(app)
build.register(app)
app.add_typer(exits.app, name="exits")
app.add_typer(report.app, name="report")


def _click_exceptions():
    """The exceptions of the click that parses the command line: typer's own copy where typer vendors
    click (typer 0.2x), else click's (older typer). Caught by class: their messages become one line."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _one_line(message: str, hint: str | None) -> None:
    hint = f" (hint: {hint})" if hint else ""
    err_console.print(f"[red]error:[/] {escape(message)}{escape(hint)}", soft_wrap=True, highlight=False)


def main() -> None:
    """Console entry point: user errors, the command line's own included (an unknown option, a value
    of the wrong type, a missing option), are one line and exit code 2; no arguments show the help."""
    click = _click_exceptions()
    aborted = (typer.Abort, KeyboardInterrupt, *([click.Abort] if hasattr(click, "Abort") else []))  # Ctrl-C
    try:
        code = app(standalone_mode=False, prog_name="edgekit")
    except getattr(click, "NoArgsIsHelpError", ()):  # `edgekit` or `edgekit exits` alone: typer has shown the help
        sys.exit(2)
    except click.UsageError as err:
        command = err.ctx.command_path if err.ctx else "edgekit"
        _one_line(" ".join(err.format_message().split()), f"see '{command} --help'")
        sys.exit(2)
    except click.ClickException as err:  # a file option that cannot be opened, and the like
        _one_line(" ".join(err.format_message().split()), None)
        sys.exit(err.exit_code)
    except aborted:
        err_console.print("aborted", highlight=False)
        sys.exit(1)
    except EdgekitError as err:
        if _state["debug"] or env.debug():
            raise
        _one_line(err.message, err.hint)
        sys.exit(2)
    if isinstance(code, int) and code:  # typer.Exit(code) in a command
        sys.exit(code)


if __name__ == "__main__":
    main()
