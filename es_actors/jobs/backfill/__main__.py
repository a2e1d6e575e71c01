"""``python -m es_actors.jobs.backfill PROJECTION --version N --store DIR ...``: the same command as
``es-actors backfill``, for ``ray job submit -- python -m es_actors.jobs.backfill ...``."""

from es_actors.jobs.backfill.command import backfill

backfill(prog_name="python -m es_actors.jobs.backfill")
