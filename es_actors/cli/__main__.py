"""``python -m es_actors.cli``: the same commands as ``es-actors``."""

from es_actors.cli.main import main

main()
