"""``edgekit targets``, ``edgekit devices`` and ``edgekit clean``: what is here, and tidying up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli.console import console


def register(app: typer.Typer) -> None:
    @app.command(name="targets")
    def targets_() -> None:
        """List compilation targets: whether each compiles here and whether its artifacts run here."""
        from edgekit.build.plan import usable_targets
        from edgekit.cli.views import targets
        from edgekit.deploy.targets import TARGETS

        _, cannot_compile = usable_targets()
        targets(
            [
                (name, cls.runtime, cannot_compile.get(name), None if name in cannot_compile else cls().runs_here(), cls.description)
                for name, cls in TARGETS.items()
            ]
        )

    @app.command(name="devices")
    def devices_() -> None:
        """List device profiles (devices/*.yaml) and whether each is usable here."""
        from edgekit.cli.views import devices
        from edgekit.deploy import devices as profiles
        from edgekit.deploy.targets import usable_here

        devices([(name, p, *usable_here(p)) for name, p in profiles.all_profiles().items()])

    @app.command(name="clean")
    def clean(
        folders: Annotated[list[Path], typer.Argument(help="folders to clean (default: dist, build and build/cache here)")] = None,
    ) -> None:
        """Remove what killed runs left behind: staging folders of dead processes, unfinished cache entries."""
        from edgekit.build.cache import clean as clean_cache
        from edgekit.deploy.artifact import clean as clean_staging

        roots = folders or [p for p in (Path("dist"), Path("build"), Path("build/cache")) if p.is_dir()]
        removed = [path for root in roots for path in (*clean_staging(root), *clean_cache(root))]
        for path in removed:
            console.print(f"removed {path}")
        console.print(f"{len(removed)} left-over folder(s) removed from {', '.join(map(str, roots)) or 'nothing'}")
