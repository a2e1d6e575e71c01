"""How a backfill task cuts its share into batches, without Ray (ADR-016, "Where the time goes"):
a task that starts from nothing takes a larger first batch (its tables are empty), later batches
are at most TASK_BATCH, a task resumed from a checkpoint takes no larger batch; sealed batches that
cover their files whole are read without the position filter. Whatever the batches, each task's
part equals the same share replayed in small batches (keys recur across batches)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("numpy")

import benchmarks.datasets as datasets  # noqa: E402
from es_actors.config import StoreConfig  # noqa: E402
from es_actors.domain import DomainRegistry  # noqa: E402
from es_actors.examples.bank import BankAccount  # noqa: E402
from es_actors.examples.bank_projections import Balances, DailyTotals  # noqa: E402
from es_actors.read.backfill import task as task_mod  # noqa: E402
from es_actors.read.backfill.plan import TaskSpec, make_plan  # noqa: E402
from es_actors.read.backfill.task import BackfillTaskFailed, run_task  # noqa: E402
from es_actors.read.backfill.work import open_work  # noqa: E402
from es_actors.read.projection import SqlProjection  # noqa: E402
from es_actors.read.readmodel import ReadModel  # noqa: E402
from es_actors.read.readmodel.sql_kind import _scan  # noqa: E402
from es_actors.read.runner import ProjectionRunner  # noqa: E402
from es_actors.storage.layout import StoreLayout  # noqa: E402
from es_actors.storage.local.follower import Batch  # noqa: E402

PARTITIONS = 2
SEG = 50  # rows per sealed segment
CHECKPOINT = 200
REGISTRY = DomainRegistry([BankAccount])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~1,200 bank events (40 accounts x 30), two partitions, sealed in segments of 50 rows."""
    root = tmp_path_factory.mktemp("bank")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets, "SEG_ROWS", SEG)
        datasets.write_bank_store(root, n_accounts=40, per_account=30, partitions=PARTITIONS, seed=3)
    return root / "store"


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Small task batches (2 segments, the first 4), and the sizes of the batches applied."""
    monkeypatch.setattr(task_mod, "TASK_BATCH", 2 * SEG)
    monkeypatch.setattr(task_mod, "FIRST_BATCH", 4 * SEG)
    seen: list[int] = []
    apply = ReadModel.apply

    def counting(self: ReadModel, p: Any, batch: Any) -> int:
        seen.append(batch.count)
        return apply(self, p, batch)

    monkeypatch.setattr(ReadModel, "apply", counting)
    return seen


def reference(store: Path, p: Any, spec: TaskSpec) -> dict[str, list[tuple[Any, ...]]]:
    """The share replayed by a bounded runner in batches of 7 (every one cut inside a segment)."""
    small = type(p.__name__, (p,), {"batch_size": 7, "__module__": __name__})
    layout = StoreLayout.from_uri(store)
    rm = ReadModel(layout.read_model_root, REGISTRY, [small], database=":memory:", threads=1)
    runner = ProjectionRunner(layout, PARTITIONS, REGISTRY, [small], StoreConfig(), read_model=rm, bounds=spec.bounds)
    try:
        while not runner.reached(small.name):
            assert runner.step(), "the reference replay made no progress"
        return tables(rm, p)
    finally:
        runner.close()


def tables(rm: ReadModel, p: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {t: sorted(rm.con.execute(f'SELECT * FROM "{p.name}"."{t}"').fetchall()) for t in p.merge.tables}


def part_of(store: Path, p: Any, spec: TaskSpec, purpose: str) -> dict[str, list[tuple[Any, ...]]]:
    """The task's final part, as rows."""
    import duckdb

    work = open_work(StoreLayout.from_uri(store), p.name, p.version, purpose)
    ck = work.load_checkpoint(spec.id)
    assert ck is not None and ck.final
    con = duckdb.connect()
    try:
        return {t: sorted(con.execute("SELECT * FROM read_parquet(?)", [str(work.table_file(ck, t))]).fetchall()) for t in ck.tables}
    finally:
        con.close()


@pytest.mark.parametrize("p", [Balances, DailyTotals], ids=lambda p: p.__name__)
def test_a_fresh_task_takes_a_larger_first_batch_and_its_part_equals_a_replay_in_small_batches(store, batches, p):
    plan = make_plan(StoreLayout.from_uri(store), PARTITIONS, p, parallelism=2, task_events=300)
    assert len(plan.tasks) > PARTITIONS  # ranges of positions: a key recurs in several shares and batches
    for spec in plan.tasks:
        batches.clear()
        result = run_task(store, PARTITIONS, REGISTRY, p, spec, open_work(StoreLayout.from_uri(store), p.name, p.version, "fresh"),
                          checkpoint_events=CHECKPOINT)
        assert result.resumed_at == 0
        assert batches[0] == min(4 * SEG, spec.events) and all(n <= 2 * SEG for n in batches[1:]), batches
        assert part_of(store, p, spec, "fresh") == reference(store, p, spec)


def test_a_sql_projections_first_batch_takes_the_checkpoint_interval_past_the_kinds_default_batch_size(store, batches, monkeypatch):
    """A fresh task's first batch is bounded by the checkpoint interval, not by the SQL kind's default
    ``batch_size`` (a scan DuckDB streams; session 22: a default share is one batch, ADR-016); a smaller
    ``batch_size`` the projection declares still bounds it. Either way the part equals a replay."""
    monkeypatch.setattr(SqlProjection, "batch_size", 3 * SEG)  # the kind's default, below the interval here
    monkeypatch.setattr(task_mod, "FIRST_BATCH", 8 * SEG)
    Declared = type("Balances", (Balances,), {"batch_size": 2 * SEG, "__module__": __name__})
    spec = TaskSpec(id="p0001", bounds={1: (0, datasets.bank_meta(store.parent)["partition_events"][1])})
    assert spec.events > CHECKPOINT > 3 * SEG
    for p, first in ((Balances, CHECKPOINT), (Declared, 2 * SEG)):
        batches.clear()
        result = run_task(store, PARTITIONS, REGISTRY, p, spec, open_work(StoreLayout.from_uri(store), p.name, p.version, f"first-{first}"),
                          checkpoint_events=CHECKPOINT)
        assert batches[0] == first and all(n <= 2 * SEG for n in batches[1:]), (p.batch_size, batches)
        assert result.checkpoints == -(-spec.events // CHECKPOINT)  # one per interval, the last one final
        assert part_of(store, p, spec, f"first-{first}") == reference(store, Balances, spec)


def test_a_task_resumed_mid_share_takes_no_larger_batch_and_its_part_is_exact(store, batches):
    """A task halts past its first checkpoint; run again, it resumes from that checkpoint (its
    tables are not empty: no larger first batch) and its part equals a replay of the share."""
    spec = TaskSpec(id="p0000", bounds={0: (0, datasets.bank_meta(store.parent)["partition_events"][0])})
    trap = spec.bounds[0][1] - 3 * SEG + 1  # in the batch after the checkpoint at 2 x CHECKPOINT or so
    Trapped = type("Balances", (Balances,), {
        "apply": [Balances.apply, f"SELECT error('the trap') FROM batch WHERE position = {trap}"],
        "retry_backoff_s": 0.0, "__module__": __name__,
    })
    layout = StoreLayout.from_uri(store)
    with pytest.raises(BackfillTaskFailed, match="the trap"):
        run_task(store, PARTITIONS, REGISTRY, Trapped, spec, open_work(layout, "balances", 1, "resumed"), checkpoint_events=CHECKPOINT)
    ck = open_work(layout, "balances", 1, "resumed").load_checkpoint(spec.id)
    assert ck is not None and not ck.final and 0 < ck.positions[0] < trap
    batches.clear()
    result = run_task(store, PARTITIONS, REGISTRY, Balances, spec, open_work(layout, "balances", 1, "resumed"),
                      checkpoint_events=CHECKPOINT)
    assert result.resumed_at == ck.positions[0] and trap - 1 - result.resumed_at <= CHECKPOINT
    assert batches and all(n <= 2 * SEG for n in batches), batches
    assert part_of(store, Balances, spec, "resumed") == reference(store, Balances, spec)


def test_a_batch_over_whole_segments_is_read_without_the_position_filter(store):
    files = sorted(str(f) for f in (store / "log" / "p0000" / "current").glob("*.parquet"))[:3]
    whole = _scan(Batch(0, 1, 3 * SEG, files=files))
    assert "position" not in whole and "partition = 0" in whole
    assert f"position BETWEEN 2 AND {3 * SEG}" in _scan(Batch(0, 2, 3 * SEG, files=files))
    assert f"position BETWEEN 1 AND {3 * SEG - 1}" in _scan(Batch(0, 1, 3 * SEG - 1, files=files))
