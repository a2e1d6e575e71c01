"""The ``es-actors`` command line: run the demo, read an aggregate's history."""

from __future__ import annotations

import json

import click

from .records import COL, micros_to_datetime


@click.group()
def main() -> None:
    """es_actors: event sourcing on Ray with Parquet append logs."""


@main.command()
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@click.option("--accounts", default=10, show_default=True)
@click.option("--commands", default=2000, show_default=True)
def demo(store_path: str, accounts: int, commands: int) -> None:
    """Run the bank example on a local store (starts a local Ray) and print what happened."""
    from jobs.demo import run

    run(store_path, accounts, commands, echo=click.echo)


@main.command()
@click.argument("aggregate_type")
@click.argument("aggregate_id")
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
def history(aggregate_type: str, aggregate_id: str, store_path: str, as_json: bool) -> None:
    """Every event of one aggregate with its audit columns. Read-only: works while a writer runs."""
    from .store import Store

    store = Store.open(store_path, read_only=True)
    rows = store.history_rows(aggregate_type, aggregate_id)
    if not rows:
        raise click.ClickException(f"no events for {aggregate_type}/{aggregate_id} in {store.root}")
    for r in rows:
        rec = {
            "version": r[COL["version"]],
            "event_type": r[COL["event_type"]],
            "schema_version": r[COL["schema_version"]],
            "partition": r[COL["partition"]],
            "position": r[COL["position"]],
            "recorded_at": micros_to_datetime(r[COL["recorded_at"]]).isoformat(),
            "principal": r[COL["principal"]],
            "command_id": r[COL["command_id"]],
            "correlation_id": r[COL["correlation_id"]],
            "causation_id": r[COL["causation_id"]],
            "payload": json.loads(r[COL["payload"]]),
            "metadata": json.loads(r[COL["metadata"]]),
        }
        if as_json:
            click.echo(json.dumps(rec))
        else:
            click.echo(
                f"v{rec['version']:<5} {rec['recorded_at']}  {rec['event_type']:<16} "
                f"{json.dumps(rec['payload']):<24} principal={rec['principal']} cmd={rec['command_id'][:12]} "
                f"pos={rec['partition']}:{rec['position']}"
                + (f" meta={json.dumps(rec['metadata'])}" if rec["metadata"] else "")
            )


if __name__ == "__main__":
    main()
