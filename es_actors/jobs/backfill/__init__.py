"""Backfill one projection version with parallel Ray tasks (``run``), its status and stop from the
store's files (``control``), and its command (``command``)."""

from es_actors.jobs.backfill.control import BackfillStatus, TaskStatus, backfill_status, stop_backfill
from es_actors.jobs.backfill.run import BackfillReport, backfill

__all__ = ["BackfillReport", "BackfillStatus", "TaskStatus", "backfill", "backfill_status", "stop_backfill"]
