"""Projections: how events become query-optimised read models in DuckDB.

Declare one by subclassing, like an aggregate::

    class Balances(SqlProjection):
        name = "balances"
        version = 1
        event_types = (AccountOpened, MoneyDeposited, MoneyWithdrawn)
        setup = "CREATE TABLE balances (account VARCHAR PRIMARY KEY, balance BIGINT)"
        apply = '''INSERT INTO balances
                   SELECT aggregate_id, sum(...) FROM batch GROUP BY ALL
                   ON CONFLICT (account) DO UPDATE SET balance = balance + excluded.balance'''

Both kinds see the same events, upcast to current versions, in position order per
partition; the projector applies each batch and its checkpoint in one DuckDB transaction
(ADR-004). A projection's tables live in the DuckDB schema named after it, with a view of
the same name in ``main`` so queries can say ``FROM balances``.

- :class:`SqlProjection`: ``apply`` is SQL run once per batch; the batch is the relation
  ``batch`` with every log column (``payload`` is JSON text: ``payload->>'amount'``).
- :class:`PythonProjection`: ``handle(db, events)`` gets a DuckDB cursor inside the
  batch's transaction and the batch as typed :class:`~es_actors.codecs.views.RecordedEvent`.

Each kind (``Projection.kind``) is applied by the handler registered for it in
:mod:`es_actors.read.readmodel.kinds`; a new kind subclasses :class:`Projection` with its
own ``kind`` and registers a handler.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Sequence

from es_actors.read.merge import Merge

if TYPE_CHECKING:
    from es_actors.codecs.views import RecordedEvent

ErrorPolicy = Literal["halt", "park"]
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_BUILD_SUFFIX = re.compile(r"__v[0-9]+$")  # <name>__v<N>: a version built beside (es_actors.read.backfill)


class Projection:
    """Common declaration of both kinds."""

    name: ClassVar[str]
    #: Bump when the read model's meaning changes: the projection is rebuilt from the log.
    version: ClassVar[int] = 1
    #: Event classes (or stored names) consumed; others never reach the projection.
    event_types: ClassVar[Sequence[Any]] = ()
    #: DDL run once (per version) in the projection's own schema.
    setup: ClassVar[str | Sequence[str]] = ()
    #: What a batch that keeps failing does: stop the projection ("halt", visible in its
    #: status) or move the failing event to the dead-letter table and carry on ("park").
    on_error: ClassVar[ErrorPolicy] = "halt"
    #: Attempts per batch (then per event, when isolating the one that fails).
    max_attempts: ClassVar[int] = 3
    retry_backoff_s: ClassVar[float] = 0.2
    #: Most events per batch (one transaction). A batch must finish well within
    #: ``projection_stall_s`` (progress is seen per committed batch).
    batch_size: ClassVar[int] = 100_000
    #: How a parallel backfill combines parts built by several workers (es_actors.read.merge);
    #: None: it cannot, and a backfill replays it with one worker.
    merge: ClassVar[Merge | None] = None
    #: SQL assertions a cutover to this version runs (ADR-018): each returns no rows when all is well.
    #: They run with this version's schema first on the search path; ``{current}`` names the schema of
    #: the version current now (e.g. ``SELECT * FROM totals t JOIN {current}.totals c USING (day)
    #: WHERE t.cents <> c.amount * 100``). Declared, they replace the row-for-row comparison as what
    #: refuses a cutover (its differences are still reported).
    cutover_checks: ClassVar[Sequence[str]] = ()
    kind: ClassVar[str] = "?"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and not _NAME.match(cls.name):
            raise ValueError(f"projection name {cls.name!r}: use lower-case letters, digits and _ (a SQL schema name)")
        if cls.on_error not in ("halt", "park"):
            raise ValueError(f"{cls.__name__}.on_error must be 'halt' or 'park', not {cls.on_error!r}")
        if cls.merge is not None and not isinstance(cls.merge, Merge):
            raise ValueError(f"{cls.__name__}.merge must be a Merge (Merge.by_aggregate(), Merge.combining(...)) or None")

    @classmethod
    def event_type_names(cls) -> tuple[str, ...]:
        return tuple(t if isinstance(t, str) else t.event_type for t in cls.event_types)

    @classmethod
    def setup_statements(cls) -> list[str]:
        return [cls.setup] if isinstance(cls.setup, str) else list(cls.setup)

    @classmethod
    def check_declaration(cls) -> None:
        """Refuse a declaration that cannot work (each kind adds its own rules)."""
        if not cls.event_types:
            raise ValueError(f"projection {cls.name!r} declares no event_types")


class SqlProjection(Projection):
    """A batch is applied by SQL over the relation ``batch`` (vectorised, in DuckDB)."""

    apply: ClassVar[str | Sequence[str]] = ()
    kind = "sql"
    batch_size = 1_000_000  # vectorised: ~0.1-0.5 s per million events here

    @classmethod
    def apply_statements(cls) -> list[str]:
        return [cls.apply] if isinstance(cls.apply, str) else list(cls.apply)

    @classmethod
    def check_declaration(cls) -> None:
        super().check_declaration()
        if not cls.apply_statements():
            raise ValueError(f"SQL projection {cls.name!r} has no apply statement")


class PythonProjection(Projection):
    """A batch is applied by Python code, with a DuckDB cursor in the batch's transaction."""

    kind = "python"

    @classmethod
    def handle(cls, db: Any, events: Sequence["RecordedEvent"]) -> None:
        raise NotImplementedError


def check_projections(projections: Sequence[type[Projection]]) -> None:
    """Refuse what cannot work before anything starts. (Whether the projector has a handler for
    each kind is checked when it opens the read model: es_actors.read.readmodel.kinds.)"""
    seen: set[str] = set()
    for p in projections:
        if not (isinstance(p, type) and issubclass(p, Projection)):
            raise TypeError(f"{p!r} is not a Projection subclass (SqlProjection, PythonProjection or another kind)")
        if "name" not in p.__dict__ and not hasattr(p, "name"):
            raise ValueError(f"{p.__name__} needs a name")
        if p.name in seen:
            raise ValueError(f"two projections are named {p.name!r}")
        if _BUILD_SUFFIX.search(p.name) and getattr(p, "beside_of", None) is None:
            raise ValueError(f"projection name {p.name!r}: names ending in __v<digits> are kept for the versions backfills build")
        seen.add(p.name)
        p.check_declaration()
