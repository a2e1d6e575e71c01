"""What a Store reads itself, without actors: an aggregate's durable history, SQL over the
read models and events (``query.py``), catch-up subscriptions, and the sealed file set for
plain DuckDB. All of it works on a read-only store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from es_actors.codecs.views import RecordedEvent
from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry
from es_actors.storage.layout import StoreDescriptor, StoreLayout, partition_of
from es_actors.storage.backends import aggregate_rows
from es_actors.storage.local.reader import sealed_files
from es_actors.write.envelope import check_text

if TYPE_CHECKING:
    from es_actors.store.facade import Store


class LogReading:
    """Mixed into :class:`~es_actors.store.Store`: its reads of the durable log."""

    layout: StoreLayout
    descriptor: StoreDescriptor
    registry: DomainRegistry
    config: StoreConfig

    def history(self, aggregate_type: str, aggregate_id: str) -> list[RecordedEvent]:
        """Every durable event of one aggregate, oldest first, with its audit columns."""
        return [e for r in self.history_rows(aggregate_type, aggregate_id) for e in RecordedEvent.from_row(r, self.registry)]

    def history_rows(self, aggregate_type: str, aggregate_id: str) -> list[tuple[Any, ...]]:
        """Raw stored rows (no domain classes needed): what the CLI prints."""
        aggregate_type = check_text(aggregate_type, "aggregate type", self.config.max_id_bytes, "max_id_bytes")
        aggregate_id = check_text(aggregate_id, "aggregate id", self.config.max_id_bytes, "max_id_bytes")
        p = partition_of(aggregate_type, aggregate_id, self.descriptor.partitions)
        rows = aggregate_rows(self.layout, p, aggregate_type, aggregate_id)
        return sorted(rows, key=lambda r: r[4])

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

    def sealed_files(self) -> list[Path]:
        """The exact sealed file set now: a snapshot that stays readable for ``gc_grace_s``."""
        return sealed_files(self.layout, self.descriptor.partitions)
