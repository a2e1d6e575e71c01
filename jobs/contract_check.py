"""Moved to ``es_actors.jobs.contract_check`` (installed with the library). This name is kept so that
``python -m jobs.contract_check`` and imports of ``jobs.contract_check`` from a checkout keep working."""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("es_actors.jobs.contract_check", run_name="__main__", alter_sys=True)
else:
    from es_actors.jobs import contract_check as _moved

    sys.modules[__name__] = _moved
