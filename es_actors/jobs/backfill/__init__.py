"""Backfill one projection version with parallel Ray tasks (``run``), and its command (``command``)."""

from es_actors.jobs.backfill.run import BackfillReport, backfill

__all__ = ["BackfillReport", "backfill"]
