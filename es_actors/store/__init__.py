"""The application facade: ``Store.open`` and aggregate handles, which put the write path,
the read path and the runtime together for a user.

Owns: the public client API. May import: every layer below it; never the CLI or jobs.
"""

from es_actors.store.facade import AggregateHandle, AggregateState, Audit, Store, Submission, new_command_id

__all__ = ["AggregateHandle", "AggregateState", "Audit", "Store", "Submission", "new_command_id"]
