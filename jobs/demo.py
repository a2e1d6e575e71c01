"""Moved to ``es_actors.jobs.demo`` (installed with the library). This name is kept so that
``python -m jobs.demo`` and imports of ``jobs.demo`` from a checkout keep working."""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("es_actors.jobs.demo", run_name="__main__", alter_sys=True)
else:
    from es_actors.jobs import demo as _moved

    sys.modules[__name__] = _moved
