"""Options shared by several commands (one name for one idea everywhere), and their small parsers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.errors import ConfigError, first_error

ModelArg = Annotated[str | None, typer.Argument(help="checkpoint directory, or 'default' (all-MiniLM-L6-v2)", show_default="default")]
TaskOpt = Annotated[str | None, typer.Option(help="classifier | embedding (default: detected from the checkpoint)")]
StaticOpt = Annotated[str | None, typer.Option("--static-shape", help="fixed BATCHxSEQUENCE, e.g. 1x128 (default: dynamic axes)")]
AtolOpt = Annotated[float | None, typer.Option(help="parity: max abs difference to PyTorch (default 1e-3 for fp32)")]
MinCosOpt = Annotated[float | None, typer.Option(help="parity: lowest cosine to PyTorch for embeddings (default 0.9999 for fp32)")]
MinAgreeOpt = Annotated[
    float | None,
    typer.Option(
        "--min-agreement", help="parity: share of texts whose argmax must match PyTorch, classifiers (default 1.0 for fp32, 0.9 for int8)"
    ),
]
TargetsOpt = Annotated[list[str], typer.Option("--target", "-t", help="target name (repeatable); see 'edgekit targets'")]
OptionOpt = Annotated[list[str], typer.Option("--option", "-o", help="target option KEY=VALUE (repeatable), e.g. precision=bf16")]
CacheOpt = Annotated[Path | None, typer.Option(help="step cache folder: unchanged steps are reused (default: none)")]


def key_values(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` options -> dict; anything else is a one-line error."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"invalid --option {item!r}", hint="write KEY=VALUE, e.g. --option precision=bf16")
        options[key.strip()] = value.strip()
    return options


def ints(text: str | None, what: str) -> list[int] | None:
    """``1,4,16`` -> [1, 4, 16]; None stays None."""
    try:
        return [int(b) for b in text.split(",") if b.strip()] if text else None
    except ValueError as err:
        raise ConfigError(f"invalid {what} {text!r}", hint="write comma-separated integers, e.g. 1,4,16") from err


def names(text: str | None) -> list[str] | None:
    """``a,b`` -> ['a', 'b']; None stays None."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def profile_options(**fields):
    """``edgekit.deploy.profile.ProfileOptions`` from a command's flags (a bad value is one line)."""
    from edgekit.deploy.profile import ProfileOptions

    try:
        return ProfileOptions(**fields)
    except ValueError as err:
        raise ConfigError(f"invalid profile option: {first_error(err)}", hint="see 'edgekit profile --help'") from err
