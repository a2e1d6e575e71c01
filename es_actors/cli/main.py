"""The ``es-actors`` command line: run the demo, read an aggregate's history, build snapshots,
check event contracts."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from es_actors.codecs.rows import COL, micros_to_datetime


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


@main.command()
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@click.option("--accounts", default=10, show_default=True)
@click.option("--commands", default=2000, show_default=True)
def demo(store_path: str, accounts: int, commands: int) -> None:
    """Run the bank example on a local store (starts a local Ray) and print what happened."""
    from es_actors.jobs.demo import run

    run(store_path, accounts, commands, echo=click.echo)


@main.command()
@click.argument("aggregate_type")
@click.argument("aggregate_id")
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
def history(aggregate_type: str, aggregate_id: str, store_path: str, as_json: bool) -> None:
    """Every event of one aggregate with its audit columns. Read-only: works while a writer runs."""
    from es_actors.store import Store

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


DEFAULT_AGGREGATES = "es_actors.examples.bank:BankAccount"
_aggregates_option = click.option(
    "--aggregates", "aggregates_spec", default=DEFAULT_AGGREGATES, show_default=True,
    help="Aggregate classes as module:Class, comma-separated (importable here and on the Ray workers).",
)
_address_option = click.option(
    "--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)."
)


def _load_aggregates(spec: str) -> list[Any]:
    from es_actors.jobs._tasks import resolve_aggregates

    from es_actors.errors import EsActorsError

    try:
        return resolve_aggregates(spec)
    except EsActorsError as exc:
        raise click.BadParameter(str(exc), param_hint="--aggregates") from None


def _table(headers: list[str], rows: list[list[Any]], right: frozenset[int] | set[int] = frozenset()) -> list[str]:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(cells[0]).rstrip(), "  ".join("-" * w for w in widths)] + [fmt(r).rstrip() for r in cells[1:]]


def _reporter(describe: Any) -> Any:
    if sys.stderr.isatty():
        return True
    return lambda report: click.echo(describe(report), err=True)


@main.command()
@click.argument("aggregate_type")
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@_aggregates_option
@_address_option
@click.option("--all", "rewrite_all", is_flag=True, help="Also snapshot aggregates whose snapshot is already current.")
@click.option("--quiet", is_flag=True, help="No per-partition progress on stderr.")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
def snapshot(
    aggregate_type: str, store_path: str, aggregates_spec: str, address: str | None, rewrite_all: bool, quiet: bool,
    as_json: bool,
) -> None:
    """Snapshot every aggregate of AGGREGATE_TYPE: one Ray task per partition. Safe on a live store."""
    from es_actors.jobs.snapshots import build_snapshots, describe_partition

    from es_actors.errors import EsActorsError

    aggs = _load_aggregates(aggregates_spec)
    try:
        report = build_snapshots(
            store_path, aggs, aggregate_type, False if quiet else _reporter(describe_partition),
            address=address, skip_current=not rewrite_all,
        )
    except EsActorsError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}" + "".join(f"\n{n}" for n in getattr(exc, "__notes__", []))) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    rows = [
        [f"p{r['partition']:04d}", f"{r['events']:,}", f"{r['aggregates']:,}", f"{r['snapshotted']:,}",
         f"{r['up_to_date']:,}", f"{r['seconds']:.2f}", r["file"] or "-"]
        for r in report.partitions
    ]
    t = report.totals
    rows.append(["total", f"{t['events']:,}", f"{t['aggregates']:,}", f"{t['snapshotted']:,}", f"{t['up_to_date']:,}",
                 f"{report.seconds:.2f}", ""])
    click.echo(f"snapshots of {report.aggregate_type} in {report.store} (fingerprint {report.fingerprint})")
    for line in _table(["partition", "events", "aggregates", "snapshotted", "up to date", "seconds", "file"], rows, {1, 2, 3, 4, 5}):
        click.echo(line)
    if t["not_encodable"]:
        click.echo(f"{t['not_encodable']} states could not be encoded (not snapshotted), e.g.:")
        for r in report.partitions:
            for ex in r["not_encodable_examples"]:
                click.echo(f"  {ex}")
    if t["unconfirmed"]:
        click.echo(f"{t['unconfirmed']} aggregates skipped: their last event was cut back from the tail after it was read")


@main.command("check-contracts")
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@_aggregates_option
@_address_option
@click.option("--max-failures", default=10_000, show_default=True, help="Failures listed per partition (all are counted).")
@click.option("--strict", is_flag=True, help="Events of aggregate types no class registers count as failures.")
@click.option("--quiet", is_flag=True, help="No per-partition progress on stderr.")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
def check_contracts(
    store_path: str, aggregates_spec: str, address: str | None, max_failures: int, strict: bool, quiet: bool, as_json: bool
) -> None:
    """Run this code's upcasters, payload validation and evolve over the whole history, read-only.

    One Ray task per partition; safe on a live store. Exit status 0 if every event reads and
    folds, 1 if anything failed (each failure is listed)."""
    from es_actors.jobs.contract_check import check_contracts as run_check
    from es_actors.jobs.contract_check import describe_partition

    from es_actors.errors import EsActorsError

    aggs = _load_aggregates(aggregates_spec)
    try:
        report = run_check(
            store_path, aggs, False if quiet else _reporter(describe_partition),
            address=address, max_failures=max_failures, strict=strict,
        )
    except EsActorsError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}" + "".join(f"\n{n}" for n in getattr(exc, "__notes__", []))) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        sys.exit(0 if report.clean else 1)
    click.echo(
        f"read {report.events:,} events in {report.partitions} partitions of {report.store}; checked "
        f"{report.aggregates_checked:,} aggregates against {', '.join(report.aggregates)} in {report.seconds:.2f}s"
    )
    rows = [[c["event_type"], f"v{c['schema_version']}", f"{c['read']:,}", f"{c['upcast']:,}", f"{c['failed']:,}"]
            for c in report.counts]
    for line in _table(["stored event type", "schema", "read", "upcast", "failed"], rows, {2, 3, 4}):
        click.echo(line)
    if report.unregistered:
        click.echo("\nevents of aggregate types no given class registers (not checked" + (", failures with --strict):" if report.strict else "):"))
        for atype, u in sorted(report.unregistered.items()):
            where = ", ".join(f"p{p['partition']:04d} positions {p['first_position']}..{p['last_position']}" for p in u["partitions"])
            click.echo(f"  {atype}: {u['events']:,} events, {u['aggregates']:,} aggregates ({where})")
    if report.failure_count:
        listed = "" if report.failures_listed == report.failure_count else f", {report.failures_listed:,} listed"
        stages = ", ".join(f"{k} {n:,}" for k, n in report.failures_by_stage.items())
        click.echo(f"\nFAILURES: {report.failure_count:,} ({stages}{listed})")
        rows = [[f"p{f['partition']:04d}", f["position"], f"{f['aggregate_type']}/{f['aggregate_id']}", f["version"],
                 f"{f['event_type']} v{f['schema_version']}", f["stage"]] for f in report.failures]
        lines = _table(["partition", "position", "aggregate", "version", "stored event", "stage"], rows, {1, 3})
        click.echo(lines[0])
        click.echo(lines[1])
        for line, f in zip(lines[2:], report.failures):
            click.echo(line)
            for text in f["error"].splitlines():
                click.echo(f"    {text}")
    click.echo("\nclean: every event reads and folds with this code" if report.clean else "\nNOT clean")
    sys.exit(0 if report.clean else 1)



def _reading_store(store_path: str, address: str | None) -> Any:
    """A read-only store; joined to the Ray cluster at ``address`` (or $RAY_ADDRESS) when given,
    so queries and status come from the store's running projector."""
    import os

    from es_actors import Store
    from es_actors.errors import EsActorsError

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        import logging

        import ray

        if not ray.is_initialized():
            ray.init(address=address, logging_level=logging.WARNING)
    try:
        return Store.open(store_path, read_only=True)
    except EsActorsError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("sql")
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@_address_option
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
    store = _reading_store(store_path, address)
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
    for line in _table(table.column_names, [[r[c] for c in table.column_names] for r in rows], numeric):
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


@main.command()
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@_address_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per projection and partition.")
def status(store_path: str, address: str | None, as_json: bool) -> None:
    """Projections: checkpoint, head, lag (events, seconds), status, last error, events/s.

    Live from the store's projector when this joins its cluster (--address / RAY_ADDRESS);
    otherwise the committed checkpoints against the log ("stopped")."""
    from es_actors.errors import EsActorsError
    from es_actors.read.readmodel import committed_status

    store = _reading_store(store_path, address)
    try:
        rows = store.projection_status() if store._find_projector() is not None else committed_status(
            store.layout, store.descriptor.partitions
        )
    except EsActorsError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, default=str))
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
    for line in _table(headers, table, {1, 2, 3, 4, 5, 6, 8, 9}):
        click.echo(line)
    bad = [r for r in rows if r["status"] in ("halted", "stalled")]
    if bad:
        raise SystemExit(2)  # scripts and health checks can tell


@main.command()
@click.option("--store", "store_path", required=True, help="Store directory (no writer may be running).")
@click.option("--accept", is_flag=True, help="Accept the recorded losses instead: partitions take commands again.")
@click.option("--principal", default=None, help="Who accepts (recorded with --accept).")
@click.option("--reason", default=None, help="Why (recorded with --accept).")
@click.option("--partition", type=int, default=None, help="With --accept: only this partition's losses.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
def repair(store_path: str, accept: bool, principal: str | None, reason: str | None, partition: int | None,
           as_json: bool) -> None:
    """Quarantine damaged tail frames and segments, keep every valid event, record the lost positions.

    Without --accept: needs every writer of the store stopped. Damaged bytes are copied to
    quarantine/<time>/ first; what could not be kept is recorded in lost-ranges.json, and its
    partitions refuse commands until an operator accepts the loss (--accept)."""
    from es_actors.storage.maintenance import accept_loss, repair_store

    if accept:
        if not principal or not reason:
            raise click.UsageError("--accept needs --principal and --reason (both are recorded)")
        accepted = accept_loss(store_path, principal, reason, partition)
        for r in accepted:
            click.echo(f"accepted: partition {r.partition} positions {r.first}..{r.last} by {principal}: {reason}")
        if not accepted:
            click.echo("nothing to accept")
        return
    report = repair_store(store_path)
    click.echo(report.model_dump_json(indent=2) if as_json else report.summary())


@main.command()
@click.option("--store", "store_path", required=True, help="Store directory (no writer may be running).")
def upgrade(store_path: str) -> None:
    """Upgrade a store written by an older es_actors to the current format, in place."""
    from es_actors.storage.maintenance import upgrade_store

    r = upgrade_store(store_path)
    if r.from_version == r.to_version:
        click.echo(f"{r.store}: already at format {r.to_version}")
    else:
        click.echo(f"{r.store}: format {r.from_version} -> {r.to_version}: {r.tail_files_rewritten} tail files "
                   f"rewritten, {r.segments_renamed} segments named with their CRC-32")



@main.command()
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@click.option("--address", default=None, help="Ray cluster the store runs on (default: $RAY_ADDRESS, else the local one).")
def stop(store_path: str, address: str | None) -> None:
    """Seal and stop a running store's partition actors and projector (every client loses them).

    Store.close() in a client that joined the store only detaches; this (or Store.shutdown())
    is the explicit way to stop the actors."""
    import logging
    import os

    import ray

    from es_actors import Store
    from es_actors.errors import EsActorsError
    from es_actors.runtime.naming import (
        find_partition_actors,
        find_projector,
        stop_partition_actors,
        stop_projector,
    )

    try:
        store = Store.open(store_path, read_only=True)
    except EsActorsError as exc:
        raise click.ClickException(str(exc)) from None
    if not ray.is_initialized():
        try:
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise click.ClickException(f"no running Ray cluster to stop {store.root} on: {exc}") from None
    projector = find_projector(store.layout, store.descriptor)
    if projector is not None:
        stop_projector(projector)
    actors = find_partition_actors(store.layout, store.descriptor)
    if actors:
        stop_partition_actors(actors)
    if projector is None and not actors:
        click.echo(f"nothing runs for {store.root} on this Ray cluster")
        return
    click.echo(f"stopped {len(actors)} partition actor(s){' and the projector' if projector is not None else ''} "
               f"of {store.root}; every tail is sealed")


if __name__ == "__main__":
    main()
