"""Commands that look after a store's log: ``verify`` (read everything, report damage, write
nothing) and ``compact`` (merge runs of small sealed segments now)."""

from __future__ import annotations

import sys
from typing import Any

import click

from es_actors.cli.common import address_option

INTERRUPTED = 130  # what a shell reports for Ctrl-C


class _PartitionBars:
    """Progress of a per-partition operation: a bar per partition on a terminal, else one line
    per finished partition on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.bars: dict[int, Any] = {}

    def step(self, partition: int, done: int, total: int, finished_line: str | None) -> None:
        if self.quiet:
            return
        if not self.tty:
            if finished_line is not None:
                click.echo(finished_line, err=True)
            return
        from tqdm import tqdm

        bar = self.bars.get(partition)
        if bar is None:
            bar = self.bars[partition] = tqdm(total=total, desc=f"p{partition:04d}", unit="file", file=sys.stderr, leave=True)
        bar.total, bar.n = max(total, 1), done
        if finished_line is not None:
            bar.set_postfix_str(finished_line.split(": ", 1)[-1][:60])
            bar.close()
        else:
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@click.command()
@click.option("--store", "store_path", required=True, help="Store directory (it may be running: verify only reads).")
@click.option("--partition", type=int, default=None, help="Only this partition.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def verify(store_path: str, partition: int | None, as_json: bool, quiet: bool) -> None:
    """Read the whole log and check it: every tail frame's and sealed segment's checksums,
    positions without a gap across segments and tail (or a gap recorded by a repair), each
    aggregate's versions without a gap. Writes nothing; takes no lock; safe on a running store.

    Exit status 0 if clean, 2 if anything is damaged (each finding names the partition, the
    file and the positions), 1 if the store cannot be read at all, 130 if interrupted. Positions
    a repair recorded lost are listed with whether an operator accepted them; they are a known
    gap, not damage (exit 0), though a partition with an unaccepted loss refuses commands."""
    from es_actors.storage.local.verify import VerifyProgress, verify_store

    view = _PartitionBars(quiet)

    def progress(pr: VerifyProgress) -> None:
        view.step(pr.partition, pr.files_done, pr.files_total, pr.result.line() if pr.result is not None else None)

    try:
        report = verify_store(store_path, partition, progress)
    except KeyboardInterrupt:
        view.close()
        click.echo("verify interrupted: nothing was written (verify only reads); run it again to check the store", err=True)
        sys.exit(INTERRUPTED)
    view.close()
    click.echo(report.model_dump_json(indent=2) if as_json else report.summary())
    sys.exit(0 if report.clean else 2)


@click.command()
@click.option("--store", "store_path", required=True, help="Store directory.")
@click.option("--partition", type=int, default=None, help="Only this partition.")
@address_option
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def compact(store_path: str, partition: int | None, address: str | None, as_json: bool, quiet: bool) -> None:
    """Merge runs of small sealed segments now (the writer also does after each seal).

    A partition whose actor runs in the Ray cluster (--address, $RAY_ADDRESS) compacts there,
    beside its writes; any other is opened here under its writer lock. Each partition is
    swapped to its compacted generation atomically: interrupted, every partition is either
    compacted or as it was, and running it again finishes the rest."""
    import json

    from es_actors.jobs.compaction import PartitionCompaction, compact_store

    done: list[int] = []

    def progress(r: PartitionCompaction) -> None:  # each partition's line once, as it finishes
        done.append(r.partition)
        if not as_json:
            click.echo(f"  {r.line()}")
        elif not quiet:
            click.echo(r.line(), err=True)

    try:
        report = compact_store(store_path, partition, address=address, progress=progress)
    except KeyboardInterrupt:
        click.echo(f"compact interrupted after {len(done)} partition(s): each partition is compacted or as it was; "
                   "run it again to finish", err=True)
        sys.exit(INTERRUPTED)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())
