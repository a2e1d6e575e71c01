"""Moved to ``es_actors.examples.bank`` (installed with the library). This name is kept so that
``--aggregates examples.bank:...`` and imports of ``examples.bank`` from a checkout keep working."""

import sys

from es_actors.examples import bank as _moved

sys.modules[__name__] = _moved
