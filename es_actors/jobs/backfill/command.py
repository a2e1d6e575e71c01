"""The ``backfill`` command: ``es-actors backfill`` and ``python -m es_actors.jobs.backfill`` (for
``ray job submit``) are this one click command."""

from __future__ import annotations

import json

import click

from es_actors.jobs.options import address_option, aggregates_option, load_aggregates


#: ``--projections`` when not given: the bundled bank example's read models.
DEFAULT_PROJECTIONS = "es_actors.examples.bank_projections:Balances,BalancesPy,DailyTotals"


@click.command()
@click.argument("projection")
@click.option("--version", "version", type=int, default=None, help="The version to build (default: the one the classes declare; required if several).")
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory or URI (s3://bucket/prefix, blobdir:///path).")
@click.option("--projections", "projections_spec", default=DEFAULT_PROJECTIONS, show_default=True,
              help="Projection classes as module:Class, comma-separated: PROJECTION is found among them by name and version.")
@aggregates_option
@address_option
@click.option("--parallelism", type=click.IntRange(min=1), default=None, help="Tasks at once (default: the cluster's CPUs; 1: one after another, in this process).")
@click.option("--restart", is_flag=True, help="Discard the checkpoints of an unfinished backfill of this version and start again.")
@click.option("--checkpoint-every", "checkpoint_events", type=click.IntRange(min=1), default=None,
              help="Log positions between a task's checkpoints (a resumed task redoes at most this many; default 4,000,000: "
              "es_actors.read.backfill.task.CHECKPOINT_EVENTS).")
@click.option("--read-model-dir", "read_model_dir", default=None,
              help="A store on object storage with no projector running: the directory it keeps its read models in "
              "(as its read_model_dir; default $ES_ACTORS_READ_MODELS or ~/.cache/es_actors/read-models).")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@click.option("--status", "show_status", is_flag=True, help="Only show where this backfill stands (works while it runs; no Ray).")
@click.option("--stop", "request_stop", is_flag=True, help="Ask the running backfill to stop and wait until it has (run it again to resume).")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="With --stop: seconds to wait for it to stop (0: only ask).")
def backfill(
    projection: str, version: int | None, store_path: str, projections_spec: str, aggregates_spec: str,
    address: str | None, parallelism: int | None, restart: bool, checkpoint_events: int | None, quiet: bool, as_json: bool,
    show_status: bool, request_stop: bool, wait_s: float, read_model_dir: str | None = None,
) -> None:
    """Rebuild PROJECTION (one version) from the log with parallel Ray tasks, beside the live version.

    The live version keeps serving and its projector keeps running; the built version lands in
    the read model as schema PROJECTION__vN and follows the log. Stopped or failed, the same
    command resumes from the tasks' checkpoints. --status shows a backfill's progress from its
    checkpoints; --stop asks a running one to stop."""
    if show_status and request_stop:
        raise click.UsageError("--status and --stop go one at a time (--stop prints the status once it has stopped)")
    if show_status or request_stop:
        _status_or_stop(projection, version, store_path, request_stop, as_json, wait_s)
        return
    from es_actors.errors import EsActorsError
    from es_actors.jobs._tasks import resolve_classes
    from es_actors.jobs.backfill.run import backfill as run_backfill
    from es_actors.read.projection import Projection

    try:
        classes = resolve_classes(projections_spec, Projection, DEFAULT_PROJECTIONS.split(",")[0])
    except EsActorsError as exc:
        raise click.BadParameter(str(exc), param_hint="--projections") from None
    named = [c for c in classes if getattr(c, "name", None) == projection]
    chosen = [c for c in named if version is None or c.version == version]
    if len(chosen) != 1:
        have = ", ".join(f"{c.name} v{c.version}" for c in classes) or "none"
        want = f"{projection!r}" + (f" v{version}" if version is not None else "")
        why = "several match: give --version" if len(chosen) > 1 else "none matches"
        raise click.BadParameter(f"projection {want}: {why} among the classes given ({have})", param_hint="--projections / --version")
    aggs = load_aggregates(aggregates_spec)
    try:
        report = run_backfill(
            store_path, chosen[0], aggs, parallelism=parallelism, address=address, progress=not quiet, restart=restart,
            read_model_dir=read_model_dir, **({"checkpoint_events": checkpoint_events} if checkpoint_events else {}),
        )
    except EsActorsError as exc:  # one line, exit 1: also under `python -m es_actors.jobs.backfill` (no es-actors group)
        notes = "".join(f"\n{n}" for n in getattr(exc, "__notes__", []))
        raise click.ClickException(f"{type(exc).__name__}: {exc}{notes}") from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(
        f"built {report.projection} v{report.version} as {report.instance} ({report.mode}, {report.tasks} tasks, "
        f"parallelism {report.parallelism}): {report.events:,} events in {report.replay_s:.2f}s "
        f"({report.events_per_s:,.0f} ev/s), merged in {report.merge_s:.2f}s; installed by {report.installed_by}"
    )
    if report.refused_parallel:
        click.echo(f"note: {report.refused_parallel}")
    for table, n in report.rows.items():
        click.echo(f"  {report.instance}.{table}: {n:,} rows")
    if report.parked:
        click.echo(f"  {report.parked:,} events parked in the dead letters of {report.instance}")


def _status_or_stop(projection: str, version: int | None, store_path: str, stop: bool, as_json: bool, wait_s: float) -> None:
    from es_actors.errors import EsActorsError
    from es_actors.jobs.backfill.control import backfill_status, stop_backfill

    try:
        if stop:
            status = stop_backfill(store_path, projection, version, wait_s=wait_s, on_request=lambda line: click.echo(line, err=True))
        else:
            status = backfill_status(store_path, projection, version)
    except EsActorsError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    if as_json:
        click.echo(json.dumps(status.to_dict(), indent=2))
    else:
        for line in status.summary():
            click.echo(line)
    if stop and status.running:
        raise click.ClickException(
            f"the backfill of {projection} v{status.version} has not stopped yet: its handler is busy (a batch in "
            "process, or Ray tasks being cancelled); it stops before its next batch; the stop request stays "
            "(look again with --status)")
