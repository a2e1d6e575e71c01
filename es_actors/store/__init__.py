"""The application facade: ``Store.open`` and aggregate handles, which put the write path,
the read path and the runtime together for a user.

Modules: ``facade`` (Store: lifecycle, commands, reading the log), ``handles`` (one
aggregate's handle), ``submissions`` (command ids, audit, bulk items), ``time_travel``,
``projections`` (``store.projections``), ``admin`` (``store.admin``), ``query``
(``store.query``), ``shortcuts`` (the Store's older names that delegate to the two sub-objects).

Owns: the public client API. May import: every layer below it; never the CLI or jobs.
"""

from es_actors.store.admin import Admin
from es_actors.store.facade import Store
from es_actors.store.handles import AggregateHandle, AggregateState
from es_actors.store.projections import Projections
from es_actors.store.submissions import Audit, Submission, new_command_id

__all__ = [
    "Admin", "AggregateHandle", "AggregateState", "Audit", "Projections", "Store", "Submission", "new_command_id",
]
