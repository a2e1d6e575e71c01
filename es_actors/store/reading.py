"""What a Store reads itself, without actors: an aggregate's durable history, SQL over the
read models and events (``query.py``), catch-up subscriptions, and the sealed file set for
plain DuckDB. All of it works on a read-only store."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from es_actors.codecs.views import RecordedEvent
from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry
from es_actors.storage.layout import StoreDescriptor, StoreLayout, partition_of
from es_actors.storage.backends import aggregate_rows
from es_actors.storage.local.reader import sealed_files
from es_actors.store.history_ranges import ReadRows, check_history_range, check_page_size, iter_history_rows
from es_actors.write.envelope import check_text

if TYPE_CHECKING:
    from es_actors.store.facade import Store


class LogReading:
    """Mixed into :class:`~es_actors.store.Store`: its reads of the durable log."""

    layout: StoreLayout
    descriptor: StoreDescriptor
    registry: DomainRegistry
    config: StoreConfig

    def history(
        self, aggregate_type: str, aggregate_id: str, *, from_version: int = 1, to_version: int | None = None,
        limit: int | None = None, backwards: bool = False,
    ) -> list[RecordedEvent]:
        """Durable events of one aggregate with ``from_version <= version <= to_version``, oldest first
        (newest first if ``backwards``), at most ``limit`` stored events (``0``: none), with their audit
        columns. Reads only that aggregate's rows (never the whole partition); works read-only, without Ray."""
        rows = self.history_rows(aggregate_type, aggregate_id, from_version=from_version, to_version=to_version,
                                 limit=limit, backwards=backwards)
        return RecordedEvent.from_rows(rows, self.registry)

    def history_rows(
        self, aggregate_type: str, aggregate_id: str, *, from_version: int = 1, to_version: int | None = None,
        limit: int | None = None, backwards: bool = False,
    ) -> list[tuple[Any, ...]]:
        """Raw stored rows (no domain classes needed) of :meth:`history`'s range: what the CLI prints."""
        rng = check_history_range(from_version, to_version, limit, backwards)
        read = self._aggregate_reader(aggregate_type, aggregate_id)
        return [] if rng.empty else read(rng.from_version, rng.to_version, rng.limit, rng.backwards)

    def iter_history(
        self, aggregate_type: str, aggregate_id: str, *, from_version: int = 1, to_version: int | None = None,
        limit: int | None = None, backwards: bool = False, page_size: int = 1000,
    ) -> Iterator[RecordedEvent]:
        """:meth:`history` as a stream, read ``page_size`` stored events at a time: for very long
        aggregates (never the whole history in memory). Arguments are checked at the call."""
        rows = self.iter_history_rows(aggregate_type, aggregate_id, from_version=from_version, to_version=to_version,
                                      limit=limit, backwards=backwards, page_size=page_size)
        registry = self.registry
        return (e for r in rows for e in RecordedEvent.from_row(r, registry))

    def iter_history_rows(
        self, aggregate_type: str, aggregate_id: str, *, from_version: int = 1, to_version: int | None = None,
        limit: int | None = None, backwards: bool = False, page_size: int = 1000,
    ) -> Iterator[tuple[Any, ...]]:
        """:meth:`history_rows` as a stream of pages (see :meth:`iter_history`)."""
        rng = check_history_range(from_version, to_version, limit, backwards)
        size = check_page_size(page_size)
        read = self._aggregate_reader(aggregate_type, aggregate_id)
        return iter_history_rows(read, rng, size)

    def _aggregate_reader(self, aggregate_type: str, aggregate_id: str) -> ReadRows:
        """A range read of one aggregate's rows (names checked now, nothing read yet)."""
        aggregate_type = check_text(aggregate_type, "aggregate type", self.config.max_id_bytes, "max_id_bytes")
        aggregate_id = check_text(aggregate_id, "aggregate id", self.config.max_id_bytes, "max_id_bytes")
        p = partition_of(aggregate_type, aggregate_id, self.descriptor.partitions)
        layout = self.layout

        def read(first: int, last: int | None, limit: int | None, backwards: bool) -> list[tuple[Any, ...]]:
            return aggregate_rows(layout, p, aggregate_type, aggregate_id, first, last, limit, backwards)

        return read

    def query(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        output: str = "arrow",
    ) -> Any:
        """Read-only DuckDB SQL over the read models and ``events`` (every durable event).

        ``params`` are bound, never spliced: a list for ``?`` / ``$1`` placeholders, a dict for
        ``$name``. ``timeout`` is seconds > 0, ``None`` for ``query_timeout_s``. The result is
        capped at ``query_max_rows`` / ``query_max_bytes`` (QueryTooLarge). A query that could
        write, run other SQL or touch files or settings is refused before it runs (QueryRefused,
        ADR-010). Returns an Arrow table (``output="pandas"`` or ``"polars"`` converts). Runs
        in the projector when one runs; otherwise in this process (read models included if no
        projector holds their file).
        """
        from es_actors.store.query import query_store

        store: Store = self  # type: ignore[assignment]
        return query_store(store, sql, params, timeout, output)

    def subscribe(
        self,
        checkpoint: dict[int, int] | None = None,
        *,
        order: str = "partition",
        follow: bool = True,
        event_types: Sequence[str] | None = None,
        poll_s: float = 0.05,
        merge_grace_s: float = 0.5,
    ) -> "Any":
        """A catch-up subscription for integrations outside DuckDB; see :class:`~es_actors.subscription.Subscription`."""
        from es_actors.read.subscription import Subscription

        return Subscription(
            self.layout, self.descriptor.partitions, self.registry, checkpoint or {}, order=order, follow=follow,
            event_types=event_types, poll_s=poll_s, merge_grace_s=merge_grace_s,
        )

    @property
    def root(self) -> Path:
        return self.layout.root

    @property
    def sealed_glob(self) -> str:
        """Give this to DuckDB's ``read_parquet``: each sealed event once, never a partial file."""
        return self.layout.sealed_glob

    def dataset(self, *, event_types: Sequence[Any] | None = None, aggregate_type: Any = None,
                as_of: datetime | None = None) -> Any:
        """The log as a Ray Dataset (``ray.data.Dataset``) of the events durable now, upcast to their
        current versions, one row each with the audit columns (the stored row's, and
        ``stored_schema_version``): for analytics and ML pipelines on Ray. ``event_types``: Event
        classes or stored names; ``aggregate_type``: an Aggregate class or its name; ``as_of``: only
        events recorded up to this timezone-aware moment. Local stores; works read-only (starts a
        loopback-only Ray if none is running)."""
        from es_actors.read.dataset import events_dataset
        from es_actors.read.dataset_plan import event_filter, plan_dataset

        where = event_filter(self.registry, event_types, aggregate_type, as_of)
        return events_dataset(plan_dataset(self.layout, self.descriptor.partitions, where), self.registry)

    def sealed_dataset(self) -> Any:
        """The sealed log now as a ``pyarrow.dataset.Dataset``, on local disk and on S3: DuckDB
        (``duckdb.sql("SELECT ... FROM ds")``) and Polars (``polars.scan_pyarrow_dataset(ds)``)
        read it; see :func:`es_actors.storage.backends.sealed_dataset`."""
        from es_actors.storage.backends import sealed_dataset

        return sealed_dataset(self.layout, self.descriptor.partitions)

    def sealed_files(self) -> list[Path]:
        """The exact sealed file set now: a snapshot that stays readable for ``gc_grace_s``."""
        return sealed_files(self.layout, self.descriptor.partitions)
