"""A partition's durable head on the whole-object backend, from its shared look: no segment is read.

Projection status and lag need only where each partition's log ends; the runner's followers
already share one look per partition (:class:`~.watch.PartitionWatch`), so the head costs no
request of its own.
"""

from __future__ import annotations

from es_actors.storage.guard import storage_boundary
from es_actors.storage.objects.watch import PartitionWatch


class ObjectHeadWatch:
    """:class:`~es_actors.storage.api.HeadWatch` of one partition of a blob store."""

    def __init__(self, watch: PartitionWatch) -> None:
        self.watch, self.partition = watch, watch.partition
        self.head = 0

    @storage_boundary("looking at a partition's head")
    def refresh(self) -> int:
        view = self.watch.view()
        if view.head > self.head:
            self.head = view.head
        return self.head
