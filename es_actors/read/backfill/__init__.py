"""Backfills: one projection version rebuilt from the log by parallel workers, beside the live one.

Free of Ray (the job in ``es_actors.jobs.backfill`` is its Ray edge):

- :mod:`.plan`: which shares of the log the workers take (per partition, per range of positions,
  or all of it for a projection that cannot be merged), fixed once in ``plan.json``;
- :mod:`.task`: one worker's share replayed by the projection runner into a private in-memory
  database, checkpointed into the store every so often, resumed from there after a failure;
- :mod:`.files`: where a backfill keeps its plan and checkpoints in the store (``backfills/``);
- :mod:`.install`: the parts combined (``Projection.merge``) into the read-model file as the
  projection's version built beside the live one, in one transaction with its checkpoints.

ADR-016 says why it is built this way.
"""
