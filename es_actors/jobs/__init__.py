"""Batch jobs over a store's sealed log, run with ``python -m es_actors.jobs.<name>`` or as Ray
jobs: the demo, snapshot building and event-contract checks, with the fold they share.

May import: the facade and every layer below; never the CLI.
"""
