"""How an aggregate's state is stored in a snapshot, and what a snapshot depends on.

The codec writes JSON through pydantic when the state's type allows (readable with DuckDB),
pickle otherwise; the fingerprint names state version, state schema, event schemas and the
upcasters in force, so a snapshot taken under other code is never used."""

from __future__ import annotations

import hashlib
import json
import pickle
from typing import Any, Protocol

from pydantic import TypeAdapter

from es_actors.domain import Aggregate, DomainRegistry


class StateCodec:
    """Encodes an aggregate's state for a snapshot: JSON through pydantic when its type allows
    (readable with DuckDB), pickle otherwise."""

    def __init__(self, agg: type[Aggregate[Any]]) -> None:
        self.state_type = type(agg.initial_state())
        try:
            self._adapter: TypeAdapter[Any] | None = TypeAdapter(self.state_type)
            self.schema = json.dumps(self._adapter.json_schema(), sort_keys=True)
            self.encoding = "json"
        except Exception:  # not a type pydantic knows: fall back to pickle and the class name
            self._adapter = None
            self.schema = f"{self.state_type.__module__}.{self.state_type.__qualname__}"
            self.encoding = "pickle"

    def encode(self, state: Any) -> bytes:
        if self._adapter is not None:
            data = self._adapter.dump_json(state)
            # JSON may not give the state back (a plain dict's int keys become strings, tuples in
            # an untyped field lists): such a snapshot would hydrate another state than replay.
            if self._adapter.validate_json(data) != state:
                raise ValueError(f"state {self.state_type.__qualname__} does not survive a JSON round trip")
            return data
        return pickle.dumps(state, protocol=5)

    def decode(self, data: bytes, encoding: str) -> Any:
        if encoding != self.encoding:
            raise ValueError(f"snapshot encoded as {encoding}, this code uses {self.encoding}")
        if self._adapter is not None:
            return self._adapter.validate_json(data)
        return pickle.loads(data)



class SnapshotRowLike(Protocol):
    """What the validity check reads of a stored snapshot row (storage.snapshots.SnapshotRow)."""

    @property
    def aggregate_type(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def event_id(self) -> str: ...


class _NotChecked:
    def __repr__(self) -> str:
        return "NOT_CHECKED"


NOT_CHECKED: Any = _NotChecked()  # the log's event id at the snapshot was not looked up (yet)


class SnapshotFormat:
    """The state codec and snapshot fingerprint of each aggregate type of a registry (cached),
    and the one rule for whether a stored snapshot may be used (:meth:`usable`)."""

    def __init__(self, registry: DomainRegistry) -> None:
        self.registry = registry
        self._codecs: dict[str, StateCodec] = {}
        self._fingerprints: dict[str, str] = {}

    def codec(self, aggregate_type: str) -> StateCodec:
        codec = self._codecs.get(aggregate_type)
        if codec is None:
            codec = self._codecs[aggregate_type] = StateCodec(self.registry.aggregate(aggregate_type))
        return codec

    def fingerprint(self, aggregate_type: str) -> str:
        """What a snapshot depends on: state version and schema, event schemas and upcasters in force.

        A snapshot whose fingerprint differs is never used (full replay instead)."""
        fp = self._fingerprints.get(aggregate_type)
        if fp is None:
            agg = self.registry.aggregate(aggregate_type)
            codec = self.codec(aggregate_type)
            text = "\n".join(
                [f"aggregate {aggregate_type} state v{agg.state_version}", f"state {codec.encoding} {codec.schema}",
                 f"events {self.registry.decoder.fingerprint()}"]
            )
            fp = self._fingerprints[aggregate_type] = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
        return fp

    def usable(self, row: SnapshotRowLike, position: int | None, event_id: Any = NOT_CHECKED) -> bool:
        """May this snapshot be used? Only if it was taken under this code (its aggregate type is
        registered and its fingerprint matches) and the log holds the very event it was taken
        at: ``position`` is the log's position of the aggregate's event at ``row.version``
        (None when the log has no such version: the snapshot is ahead of it), ``event_id`` the
        id of that event (None when it could not be read: not used; :data:`NOT_CHECKED` to
        leave that part to a later call, e.g. to read the ids of many snapshots in one pass).
        A row without an event id (older writers) is checked by position only.

        The one rule used by the partition's hydration (one at a time and in bulk), by its
        snapshot-file consolidation, and by the snapshot job.
        """
        if row.aggregate_type not in self.registry.aggregates:
            return False
        if position is None or row.position != position or row.fingerprint != self.fingerprint(row.aggregate_type):
            return False
        return event_id is NOT_CHECKED or not row.event_id or row.event_id == event_id
