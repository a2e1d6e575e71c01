"""Command-line options every job's command shares (``--aggregates``, ``--address``), kept with the
jobs so a job's own ``python -m`` entry point and ``es-actors`` take them the same way."""

from __future__ import annotations

from typing import Any

import click

#: ``--aggregates`` when not given: the bundled bank example.
DEFAULT_AGGREGATES = "es_actors.examples.bank:BankAccount"
aggregates_option = click.option(
    "--aggregates", "aggregates_spec", default=DEFAULT_AGGREGATES, show_default=True,
    help="Aggregate classes as module:Class, comma-separated (importable here and on the Ray workers).",
)
address_option = click.option(
    "--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)."
)


def load_aggregates(spec: str) -> list[Any]:
    """The classes ``--aggregates`` names, imported; a bad name is a usage error naming the option."""
    from es_actors.errors import EsActorsError
    from es_actors.jobs._tasks import resolve_aggregates

    try:
        return resolve_aggregates(spec)
    except EsActorsError as exc:
        raise click.BadParameter(str(exc), param_hint="--aggregates") from None


