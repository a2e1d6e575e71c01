"""Moved to ``es_actors.jobs.snapshots`` (installed with the library). This name is kept so that
``python -m jobs.snapshots`` and imports of ``jobs.snapshots`` from a checkout keep working."""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("es_actors.jobs.snapshots", run_name="__main__", alter_sys=True)
else:
    from es_actors.jobs import snapshots as _moved

    sys.modules[__name__] = _moved
