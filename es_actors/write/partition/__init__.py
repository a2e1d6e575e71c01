"""One partition's write model, free of Ray, split by phase: the aggregate index built at
recovery (index.py), hydration and passivation (hydration.py), idempotency by command id
(dedup.py), deciding a command (decide.py), the durable append and publishing (commit.py),
when to snapshot (snapshot_policy.py), and the coordinator that runs a batch through them
(partition.py). The Ray actor shell (es_actors/write/actor.py) hosts one :class:`Partition`.
"""

from es_actors.write.partition.decide import safe_text
from es_actors.write.partition.dedup import Remembered, command_digest, command_digest_of
from es_actors.write.partition.index import AggregateEntry
from es_actors.write.partition.partition import Partition

__all__ = ["AggregateEntry", "Partition", "Remembered", "command_digest", "command_digest_of", "safe_text"]
