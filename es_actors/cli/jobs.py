"""Commands that run jobs over a store: the demo, building snapshots, checking event contracts
(one Ray task per partition, safe on a live store)."""

from __future__ import annotations

import json
import sys

import click

from es_actors.cli.common import address_option, aggregates_option, load_aggregates, reporter, text_table
from es_actors.jobs.backfill.command import backfill

__all__ = ["backfill", "check_contracts", "demo", "snapshot"]


@click.command()
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@click.option("--accounts", default=10, show_default=True)
@click.option("--commands", default=2000, show_default=True)
def demo(store_path: str, accounts: int, commands: int) -> None:
    """Run the bank example on a local store (starts a local Ray) and print what happened."""
    from es_actors.jobs.demo import run

    run(store_path, accounts, commands, echo=click.echo)


@click.command()
@click.argument("aggregate_type")
@click.option("--store", "store_path", default="./demo-store", show_default=True,
              help="Store directory, or URI (s3://bucket/prefix, blobdir:///path).")
@aggregates_option
@address_option
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

    aggs = load_aggregates(aggregates_spec)
    try:
        report = build_snapshots(
            store_path, aggs, aggregate_type, False if quiet else reporter(describe_partition),
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
    for line in text_table(["partition", "events", "aggregates", "snapshotted", "up to date", "seconds", "file"], rows, {1, 2, 3, 4, 5}):
        click.echo(line)
    if t["not_encodable"]:
        click.echo(f"{t['not_encodable']} states could not be encoded (not snapshotted), e.g.:")
        for r in report.partitions:
            for ex in r["not_encodable_examples"]:
                click.echo(f"  {ex}")
    if t["unconfirmed"]:
        click.echo(f"{t['unconfirmed']} aggregates skipped: their last event was cut back from the tail after it was read")


@click.command("check-contracts")
@click.option("--store", "store_path", default="./demo-store", show_default=True,
              help="Store directory, or URI (s3://bucket/prefix, blobdir:///path).")
@aggregates_option
@address_option
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

    aggs = load_aggregates(aggregates_spec)
    try:
        report = run_check(
            store_path, aggs, False if quiet else reporter(describe_partition),
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
    for line in text_table(["stored event type", "schema", "read", "upcast", "failed"], rows, {2, 3, 4}):
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
        lines = text_table(["partition", "position", "aggregate", "version", "stored event", "stage"], rows, {1, 3})
        click.echo(lines[0])
        click.echo(lines[1])
        for line, f in zip(lines[2:], report.failures):
            click.echo(line)
            for text in f["error"].splitlines():
                click.echo(f"    {text}")
    click.echo("\nclean: every event reads and folds with this code" if report.clean else "\nNOT clean")
    sys.exit(0 if report.clean else 1)

