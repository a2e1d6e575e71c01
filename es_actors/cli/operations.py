"""Commands that operate on a store as a whole: repair after damage, upgrade the format,
stop its running actors."""

from __future__ import annotations

import click


@click.command()
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
    from es_actors.storage.local.repair import accept_loss, repair_store

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


@click.command()
@click.option("--store", "store_path", required=True, help="Store directory (no writer may be running).")
def upgrade(store_path: str) -> None:
    """Upgrade a store written by an older es_actors to the current format, in place."""
    from es_actors.storage.local.upgrade import upgrade_store

    r = upgrade_store(store_path)
    if r.from_version == r.to_version:
        click.echo(f"{r.store}: already at format {r.to_version}")
    else:
        click.echo(f"{r.store}: format {r.from_version} -> {r.to_version}: {r.tail_files_rewritten} tail files "
                   f"rewritten, {r.segments_renamed} segments named with their CRC-32")


@click.command()
@click.option("--store", "store_path", default="./demo-store", show_default=True, help="Store directory.")
@click.option("--address", default=None, help="Ray cluster the store runs on (default: $RAY_ADDRESS, else the local one).")
def stop(store_path: str, address: str | None) -> None:
    """Seal and stop a running store's partition actors and projector (every client loses them).

    Store.close() in a client that joined the store only detaches; this (or Store.shutdown())
    is the explicit way to stop the actors."""
    import logging
    import os

    import ray

    from es_actors.store import Store
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
