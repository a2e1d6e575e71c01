"""Kept for checkouts: the examples moved to ``es_actors.examples``."""
