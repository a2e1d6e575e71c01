"""The ``es-actors`` command line: every command an operator runs, errors as one line.

May import: every layer.
"""

from es_actors.cli.main import main

__all__ = ["main"]
