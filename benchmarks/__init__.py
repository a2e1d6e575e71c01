"""Benchmarks of es_actors beside its peers. Run with ``python -m benchmarks.run``; see README.md."""
