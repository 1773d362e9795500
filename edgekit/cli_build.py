"""CLI commands of the build step, registered on the main app by :mod:`edgekit.cli`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app`` (imports stay inside the commands)."""
