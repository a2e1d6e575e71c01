"""Commands that read a store: one aggregate's history, SQL queries, projection status.
Read-only: each works while a writer runs."""

from __future__ import annotations

import itertools
import json
from typing import Any

import click

from es_actors.cli.common import address_option, reading_store, text_table
from es_actors.codecs.rows import COL, micros_to_datetime


@click.command()
@click.argument("aggregate_type")
@click.argument("aggregate_id")
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.option("--from-version", "from_version", default=1, show_default=True, type=int, help="First version shown.")
@click.option("--to-version", "to_version", default=None, type=int, help="Last version shown (default: the newest).")
@click.option("--limit", default=None, type=int, help="Show at most this many events (0: none).")
@click.option("--backwards", is_flag=True, help="Newest first (with --limit: the newest events).")
def history(aggregate_type: str, aggregate_id: str, store_path: str, as_json: bool, from_version: int,
            to_version: int | None, limit: int | None, backwards: bool) -> None:
    """Events of one aggregate with their audit columns (all, or a version range). Read-only: works
    while a writer runs; reads only this aggregate's events, a page at a time."""
    from es_actors.errors import EsActorsError
    from es_actors.store import Store

    store = Store.open(store_path, read_only=True)
    try:
        rows = store.iter_history_rows(aggregate_type, aggregate_id, from_version=from_version, to_version=to_version,
                                       limit=limit, backwards=backwards)
        first = next(rows, None)
    except EsActorsError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    if first is None:
        if limit == 0:
            return
        shown = "" if (from_version, to_version) == (1, None) else f" in versions {from_version}..{to_version or ''}"
        raise click.ClickException(f"no events for {aggregate_type}/{aggregate_id}{shown} in {store.root}")
    for r in itertools.chain([first], rows):
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


@click.command()
@click.argument("sql")
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@address_option
@click.option("--timeout", default=None, type=float, help="Cancel the query after this many seconds (default: query_timeout_s).")
@click.option(
    "--param", "-p", "param", multiple=True, metavar="VALUE|NAME=VALUE",
    help="Bind VALUE to the next ? (or NAME=VALUE to $NAME; all one way or the other); repeatable. JSON "
    "values (5, true, '\"a=b\"') keep their type, anything else is text.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row.")
def query(sql: str, store_path: str, address: str | None, timeout: float | None, param: tuple[str, ...], as_json: bool) -> None:
    """Run one read-only SQL query over the read models and `events` (every durable event)."""
    from es_actors.errors import EsActorsError

    params = _query_params(param)
    store = reading_store(store_path, address)
    try:
        table = store.query(sql, params, timeout=timeout)
    except EsActorsError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    rows = table.to_pylist()
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, default=str))
        return
    numeric = {i for i, f in enumerate(table.schema) if pa_is_numeric(f.type)}
    for line in text_table(table.column_names, [[r[c] for c in table.column_names] for r in rows], numeric):
        click.echo(line)
    click.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def _query_params(values: tuple[str, ...]) -> list[Any] | dict[str, Any] | None:
    """``--param`` values: all positional, or all NAME=VALUE (DuckDB does not mix them)."""
    import re

    if not values:
        return None
    named = [re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", v, re.S) for v in values]
    if all(named):
        return {m.group(1): _param_value(m.group(2)) for m in named if m}
    if any(named) and not all(named):
        raise click.BadParameter("give every --param as NAME=VALUE, or none", param_hint="--param")
    return [_param_value(v) for v in values]


def _param_value(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (str, int, float, bool)) or value is None else text


def pa_is_numeric(t: Any) -> bool:
    import pyarrow.types as pat

    return bool(pat.is_integer(t) or pat.is_floating(t) or pat.is_decimal(t))


@click.command()
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@address_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per projection and partition.")
@click.option("--watch", is_flag=True, help="A live view refreshed in place: writes/s, lag per projection, backfills.")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds between refreshes (--watch).")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N refreshes (--watch).")
def status(store_path: str, address: str | None, as_json: bool, watch: bool, interval: float, count: int | None) -> None:
    """Projections: checkpoint, head, lag (events, seconds), status, last error, events/s.

    Live from the store's projector when this joins its cluster (--address / RAY_ADDRESS);
    otherwise the committed checkpoints against the log ("stopped")."""
    from es_actors.errors import EsActorsError
    from es_actors.read.readmodel import committed_status

    if watch and as_json:
        raise click.UsageError("--watch draws tables; for JSON run status --json repeatedly")
    store = reading_store(store_path, address)
    if watch:
        from es_actors.cli.watch import watch as watch_view

        raise SystemExit(watch_view(store, interval, count))  # 0 after Ctrl-C; 2 if halted/stalled at the end
    try:
        rows = store.projection_status() if store.projections.running() is not None else committed_status(
            store.layout, store.descriptor.partitions
        )
    except EsActorsError as exc:
        raise click.ClickException(str(exc)) from None
    bad = [r for r in rows if r["status"] in ("halted", "stalled")]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, default=str))
        if bad:
            raise SystemExit(2)  # the same answer as the table: scripts and health checks can tell
        return
    if not rows:
        click.echo(f"no projections in {store.root}")
        return
    headers = ["projection", "v", "partition", "checkpoint", "head", "lag", "lag s", "status", "events/s", "parked", "last error"]
    table = [
        [r["projection"], r["version"], r["partition"], r["checkpoint"], r["head"], r["lag_events"],
         "-" if r["lag_seconds"] is None else r["lag_seconds"], r["status"], r["events_per_s"], r["dead_letters"],
         (r["last_error"] or "")[:80]]
        for r in rows
    ]
    for line in text_table(headers, table, {1, 2, 3, 4, 5, 6, 8, 9}):
        click.echo(line)
    if bad:
        raise SystemExit(2)  # scripts and health checks can tell
