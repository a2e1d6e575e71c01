"""How a parallel backfill may split a projection's log and combine what its workers built.

Parallel workers cannot all write one DuckDB file, so each builds the projection's tables from
its share of the log in a database of its own, and the parts are combined afterwards (ADR-016).
Whether that gives the same tables as one replay depends on the projection, so a projection
says it, with ``merge = ...``:

- :meth:`Merge.by_aggregate`: every row comes from the events of one aggregate (or at least of
  one partition), so partitions build disjoint rows. A backfill runs one worker per partition
  and inserts each part's rows; a key found in two parts is an error, not a silent overwrite.
- :meth:`Merge.combining`: for each table, SQL that folds a part (the relation ``part``, the
  same columns as the table) into the table: sums add, counts add, min/max take the extreme,
  last-by-position keeps the row with the greater position. Such a projection can also be split
  within a partition, by ranges of positions.

A projection without ``merge`` (the default) is replayed by one worker, in log order, with the
same code: exact, not parallel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

Split = Literal["partition", "range"]


@dataclass(frozen=True)
class Merge:
    """A projection's declaration that parts built in parallel combine into one replay's result."""

    #: The finest unit of work: one partition, or a range of positions within one.
    split: Split
    #: Table -> SQL folding the relation ``part`` into it; a table not named is combined by
    #: inserting the part's rows (they must not collide).
    tables: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def by_aggregate(cls) -> "Merge":
        """Rows keyed by aggregate (disjoint across partitions): one worker per partition."""
        return cls("partition", {})

    @classmethod
    def combining(cls, **tables: str) -> "Merge":
        """Each named table's SQL folds ``part`` into it, so any split of the log combines."""
        if not tables:
            raise ValueError("Merge.combining needs the SQL of at least one table: Merge.combining(table='INSERT ...')")
        return cls("range", dict(tables))

    def check(self, projection: str, tables: list[str]) -> None:
        """Refuse a declaration that does not fit the projection's tables (after its set-up ran)."""
        unknown = sorted(set(self.tables) - set(tables))
        if unknown:
            raise ValueError(f"projection {projection!r}: merge names tables it does not have: {unknown} (tables: {sorted(tables)})")
        if self.split == "range":
            missing = sorted(set(tables) - set(self.tables))
            if missing:
                raise ValueError(
                    f"projection {projection!r}: a combining merge needs the SQL of every table; missing: {missing}"
                )
        for t, sql in self.tables.items():
            if not isinstance(sql, str) or not sql.strip():
                raise ValueError(f"projection {projection!r}: the merge SQL of table {t!r} is empty")
