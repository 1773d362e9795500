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


def main() -> None:
    """Console entry point: user errors are one line and exit code 2."""
    try:
        app()
    except EdgekitError as err:
        if _state["debug"] or env.debug():
            raise
        hint = f" (hint: {err.hint})" if err.hint else ""
        err_console.print(f"[red]error:[/] {escape(err.message)}{escape(hint)}", soft_wrap=True, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
