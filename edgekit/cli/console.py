"""The CLI's two consoles (results on stdout, errors and warnings on stderr)."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
