"""``es-actors projections``: the versions of each projection, and check / cutover / rollback /
drop of one, with the operations log (ADR-018). Each command runs on the store's projector when
one runs in the Ray cluster it joins (--address or $RAY_ADDRESS), else on the read-model file here."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from es_actors.cli.common import address_option, reading_store, text_table

_store = click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
_json = click.option("--json", "as_json", is_flag=True, help="The answer as JSON.")
_who = [
    click.option("--principal", required=True, help="Who does it (recorded; self-declared)."),
    click.option("--reason", required=True, help="Why (recorded)."),
]


def _with(options: list[Any]) -> Any:
    def wrap(f: Any) -> Any:
        for o in reversed(options):
            f = o(f)
        return f
    return wrap


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group()
def projections() -> None:
    """Versions of projections: list, check, cutover, rollback, drop, and the operations log."""


@projections.command("list")
@_store
@address_option
@_json
def list_versions(store_path: str, address: str | None, as_json: bool) -> None:
    """Every projection with its versions, which is current, status and lag."""
    rows = reading_store(store_path, address).projections.versions()
    if as_json:
        _echo_json(rows)
        return
    table = [[r["projection"], r["version"], r["instance"], "*" if r["current"] else "", r["status"], r["lag_events"]]
             for r in rows]
    for line in text_table(["projection", "version", "instance", "current", "status", "lag_events"], table, right={1, 5}):
        click.echo(line)


def _report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _echo_json(report)
        return
    click.echo(f"{report['projection']}: current {report['current']}, candidate {report['candidate']}")
    for t in report.get("tables", []):
        counts = f"rows {t.get('rows_current', '-')} -> {t.get('rows_candidate', '-')}"
        click.echo(f"  {t.get('kind', 'table')} {t['table']}: {counts}" + (" (differs)" if t["differs"] else " (same)")
                   + (f"; shape: {t['shape']}" if t.get("shape") else ""))
        for s in t.get("sample", [])[:5]:
            click.echo(f"    {s['in']}: {json.dumps({k: v for k, v in s.items() if k != 'in'}, default=str)}")
    for a in report.get("cutover_checks", []):
        click.echo(f"  check {'ok' if a['ok'] else 'FAILED'}: {a['sql'].strip()[:120]}")
    for p in report["problems"]:
        click.echo(f"  problem: {p}")
    click.echo("ok" if report["ok"] else "differs")


@projections.command()
@click.argument("name")
@click.option("--version", "version", required=True, type=int, help="The version to compare with the current one.")
@_store
@address_option
@_json
def check(name: str, version: int, store_path: str, address: str | None, as_json: bool) -> None:
    """Compare a version with the current one; exits 1 when they differ (or it is behind or halted)."""
    report = reading_store(store_path, address).projections.check(name, version)
    _report(report, as_json)
    if not report["ok"]:
        sys.exit(1)


@projections.command()
@click.argument("name")
@click.option("--version", "version", required=True, type=int, help="The version to make current.")
@_with(_who)
@click.option("--force", is_flag=True, help="Cut over although the check finds a difference (recorded as forced).")
@_store
@address_option
@_json
def cutover(name: str, version: int, principal: str, reason: str, force: bool, store_path: str, address: str | None,
            as_json: bool) -> None:
    """Check a version, then switch the views in main to it (one transaction)."""
    report = reading_store(store_path, address).projections.cutover(name, version, principal, reason, force)
    _echo_switch(name, report, as_json)


def _echo_switch(name: str, report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _echo_json(report)
    else:
        click.echo(f"{name}: current {report['current']} (was {report['previous']})" + (" forced" if report["forced"] else ""))


@projections.command()
@click.argument("name")
@_with(_who)
@click.option("--force", is_flag=True, help="Roll back although that version is behind the log or halted (recorded).")
@_store
@address_option
@_json
def rollback(name: str, principal: str, reason: str, force: bool, store_path: str, address: str | None, as_json: bool) -> None:
    """Switch back to the version current before the last cutover."""
    report = reading_store(store_path, address).projections.rollback(name, principal, reason, force)
    _echo_switch(name, report, as_json)


@projections.command()
@click.argument("name")
@click.option("--version", "version", required=True, type=int, help="The version to remove (not the current one).")
@_with(_who)
@_store
@address_option
def drop(name: str, version: int, principal: str, reason: str, store_path: str, address: str | None) -> None:
    """Remove a version that is not current: its schema, checkpoints, dead letters."""
    report = reading_store(store_path, address).projections.drop(name, version, principal, reason)
    click.echo(f"{name}: dropped {report['dropped']}")


@projections.command()
@click.argument("name", required=False)
@_store
@address_option
@_json
def log(name: str | None, store_path: str, address: str | None, as_json: bool) -> None:
    """The operations log (cutover, rollback, drop): who, why, outcome (running: its process still
    runs it; interrupted: it died without an outcome; unknown: started on another host)."""
    rows = reading_store(store_path, address).projections.operations(name)
    if as_json:
        _echo_json(rows)
        return
    table = [[r["id"], r["at"][:19], r["operation"], r["projection"], r["from_instance"] or "", r["to_instance"] or "",
              r["principal"], r["outcome"] + (" (forced)" if r["forced"] else ""), r["reason"]] for r in rows]
    for line in text_table(["id", "at", "operation", "projection", "from", "to", "principal", "outcome", "reason"], table,
                           right={0}):
        click.echo(line)
