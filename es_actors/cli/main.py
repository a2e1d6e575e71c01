"""The ``es-actors`` group: every es_actors error reaches the user as one line; the commands
live in one module per family (``reading``, ``jobs``, ``operations``)."""

from __future__ import annotations

from typing import Any

import click

from es_actors.cli.common import DEFAULT_AGGREGATES
from es_actors.cli.jobs import backfill, check_contracts, demo, snapshot
from es_actors.cli.monitoring import monitoring
from es_actors.cli.maintenance import compact, verify
from es_actors.cli.operations import repair, stop, upgrade
from es_actors.cli.reading import history, query, status
from es_actors.cli.versions import projections

__all__ = ["DEFAULT_AGGREGATES", "main"]


class _Cli(click.Group):
    """Every es_actors error reaches the user as one line naming what failed (exit 1), never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from es_actors.errors import EsActorsError

        try:
            return super().invoke(ctx)
        except EsActorsError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


@click.group(cls=_Cli)
def main() -> None:
    """es_actors: event sourcing on Ray with Parquet append logs."""


for _command in (demo, history, snapshot, check_contracts, backfill, query, status, repair, upgrade, stop, projections,
                 verify, compact):
    main.add_command(_command)
main.add_command(monitoring)


if __name__ == "__main__":
    main()
