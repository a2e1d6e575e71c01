"""The Store's documented short names for operations that live on its sub-objects:
``store.wait_for``, ``store.pause``, ... (``store.projections``) and ``store.stats``,
``store.seal``, ... (``store.admin``). Each delegates; nothing else is here, so the facade
stays about lifecycle and commands."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from es_actors.codecs.views import CommandResult

if TYPE_CHECKING:
    from es_actors.store.admin import Admin
    from es_actors.store.projections import Projections


class StoreShortcuts:
    """Mixed into :class:`~es_actors.store.Store`: the older top-level names, kept working."""

    projections: "Projections"
    admin: "Admin"

    def stats(self) -> list[dict[str, Any]]:
        """Per-partition counters from the owning actors (:meth:`Admin.stats`)."""
        return self.admin.stats()

    def seal(self) -> None:
        """Seal every partition's tail now; close does this too (:meth:`Admin.seal`)."""
        self.admin.seal()

    def passivate(self) -> int:
        """Drop every hydrated state from the partition actors' memory (:meth:`Admin.passivate`)."""
        return self.admin.passivate()

    def hydrate(self, limit_per_partition: int | None = None) -> int:
        """Warm up the most recently written aggregates of each partition (:meth:`Admin.hydrate`)."""
        return self.admin.hydrate(limit_per_partition)

    def flush_snapshots(self) -> int:
        """Write the snapshots the live policy has due now (:meth:`Admin.flush_snapshots`)."""
        return self.admin.flush_snapshots()

    def wait_for(
        self, projection: str, result: "CommandResult | dict[int, int] | None", timeout: float = 10.0
    ) -> None:
        """Read-your-writes (:meth:`Projections.wait_for`)."""
        self.projections.wait_for(projection, result, timeout)

    def pause(self, projection: str) -> None:
        """Stop applying events to a projection (:meth:`Projections.pause`)."""
        self.projections.pause(projection)

    def resume(self, projection: str) -> None:
        """Resume a paused projection, or retry a halted one (:meth:`Projections.resume`)."""
        self.projections.resume(projection)

    def projection_status(self) -> list[dict[str, Any]]:
        """Per projection and partition: checkpoint, lag, status... (:meth:`Projections.status`)."""
        return self.projections.status()

    def dead_letters(self, projection: str | None = None) -> Any:
        """Events parked by projections with ``on_error="park"`` (:meth:`Projections.dead_letters`)."""
        return self.projections.dead_letters(projection)

    def retry_dead_letters(self, projection: str) -> dict[str, int]:
        """Apply parked events again (:meth:`Projections.retry_dead_letters`)."""
        return self.projections.retry_dead_letters(projection)
