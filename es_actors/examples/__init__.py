"""Example domains shipped with the library: a bank account aggregate with upcasters, and
projections over it. The demo and the CLI's default ``--aggregates`` use them.

May import: the public API (``es_actors``) and the domain.
"""
