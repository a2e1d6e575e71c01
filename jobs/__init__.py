"""Kept for checkouts: the jobs moved to ``es_actors.jobs``."""
