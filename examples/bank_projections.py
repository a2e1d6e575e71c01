"""Moved to ``es_actors.examples.bank_projections`` (installed with the library). This name is kept so that
``--aggregates examples.bank_projections:...`` and imports of ``examples.bank_projections`` from a checkout keep working."""

import sys

from es_actors.examples import bank_projections as _moved

sys.modules[__name__] = _moved
