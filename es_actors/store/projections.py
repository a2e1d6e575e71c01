"""``store.projections``: the store's projector seen from a client: read-your-writes waits,
pause/resume, status, dead letters, and finding or calling the projector actor.

Every call here is safe to repeat, so each waits out a projector restart after a crash
(up to ``retry_deadline_s``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from es_actors.codecs.views import CommandResult
from es_actors.errors import EsActorsError

if TYPE_CHECKING:
    from es_actors.store.facade import Store


class Projections:
    """The projector operations of one :class:`~es_actors.store.Store` (``store.projections``)."""

    def __init__(self, store: "Store") -> None:
        self.store = store
        self.actor: Any = None  # the projector this Store's open started or joined (None: find by name)
        self.created = False  # whether this Store's open started it (and so stops it on close)

    def running(self) -> Any | None:
        """The store's projector: the one this Store opened, else the one running under the
        store's name in the connected Ray cluster, else None (no Ray is started for this)."""
        if self.actor is not None:
            return self.actor
        import ray

        if not ray.is_initialized():
            return None
        from es_actors.runtime.naming import find_projector

        return find_projector(self.store.layout, self.store.descriptor)

    def _running_or_raise(self) -> Any:
        projector = self.running()
        if projector is None:
            raise EsActorsError("no projector runs for this store: open it with projections=[...]")
        return projector

    def call(self, method: str, *args: Any, projector: Any = None, wait_s: float | None = None) -> Any:
        """Call the projector (``projector``, else :meth:`running`), waiting out its restart after
        a crash for up to ``retry_deadline_s``; each answer for up to ``wait_s`` (then the call is
        cancelled and Ray's GetTimeoutError raised)."""
        import ray

        from es_actors.runtime.cluster import actor_get

        projector = self._running_or_raise() if projector is None else projector
        deadline = time.monotonic() + self.store.config.retry_deadline_s
        while True:
            ref = getattr(projector, method).remote(*args)
            try:
                return actor_get(ref, timeout=wait_s)
            except ray.exceptions.GetTimeoutError:
                try:
                    ray.cancel(ref)  # if still queued; a running query ends at its own deadline
                except Exception:
                    pass
                raise
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def wait_for(
        self, projection: str, result: "CommandResult | dict[int, int] | None", timeout: float = 10.0
    ) -> None:
        """Read-your-writes: return once ``projection`` has applied the command's events (or
        the given {partition: position}; or, for None, everything acknowledged so far);
        ProjectionTimeout after ``timeout`` seconds."""
        positions: dict[int, int]
        if result is None:
            positions = {
                s["partition"]: s["next_position"] - 1 for s in self.store.admin.stats() if s["next_position"] > 1
            }
        elif isinstance(result, CommandResult):
            positions = {}
            for p, pos in result.positions:
                positions[p] = max(pos, positions.get(p, 0))
        else:
            positions = dict(result)
        if positions:
            self.call("wait_for", projection, positions, timeout)

    def pause(self, projection: str) -> None:
        """Stop applying events to a projection; its checkpoint (and read model) stay as they are."""
        self.call("pause", projection)

    def resume(self, projection: str) -> None:
        """Resume a paused projection, or retry a halted one from its checkpoint."""
        self.call("resume", projection)

    def status(self) -> list[dict[str, Any]]:
        """Per projection and partition: checkpoint, head, lag (events, seconds), status, last error, events/s."""
        return self.call("status")  # type: ignore[no-any-return]

    def dead_letters(self, projection: str | None = None) -> Any:
        """Events parked by projections with ``on_error="park"`` (Arrow table)."""
        return self.call("dead_letters", projection)

    def retry_dead_letters(self, projection: str) -> dict[str, int]:
        """Apply parked events again (after a fix); those that succeed leave the dead letters."""
        return self.call("retry_dead_letters", projection)  # type: ignore[no-any-return]

    # -- versions (ADR-018): on the projector if one runs, else on the read-model file here ------

    def _versions(self, operation: str, *args: Any) -> Any:
        if self.running() is not None:
            return self.call(operation, *args)
        from es_actors.read.versions import in_process

        return in_process(self.store.layout, self.store.descriptor.partitions, operation, *args)

    def versions(self) -> list[dict[str, Any]]:
        """Every projection's versions: which is current, followed, status, lag in events."""
        return self._versions("versions")  # type: ignore[no-any-return]

    def check(self, projection: str, version: int) -> dict[str, Any]:
        """Compare a version with the current one (``ok``, ``problems``, per-table differences, a sample)."""
        return self._versions("check", projection, version)  # type: ignore[no-any-return]

    def cutover(self, projection: str, version: int, principal: str, reason: str, force: bool = False) -> dict[str, Any]:
        """Make ``version`` current (the views in ``main`` switch atomically) after a check;
        CutoverRefused on a problem unless ``force``. Who and why go to the operations log."""
        return self._versions("cutover", projection, version, principal, reason, force)  # type: ignore[no-any-return]

    def rollback(self, projection: str, principal: str, reason: str, force: bool = False) -> dict[str, Any]:
        """Make the version current before the last cutover current again."""
        return self._versions("rollback", projection, principal, reason, force)  # type: ignore[no-any-return]

    def drop(self, projection: str, version: int, principal: str, reason: str) -> dict[str, Any]:
        """Remove a version that is not current (its schema, checkpoints, dead letters, build record)."""
        return self._versions("drop", projection, version, principal, reason)  # type: ignore[no-any-return]

    def operations(self, projection: str | None = None) -> list[dict[str, Any]]:
        """The operations log: each cutover, rollback and drop, who, why, and its outcome."""
        return self._versions("operations", projection)  # type: ignore[no-any-return]
