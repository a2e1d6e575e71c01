"""Test kits shipped with the library, for backends and projects built on it (e.g. the storage
conformance suite every storage backend must pass).

May import: every layer (and pytest, which only these kits need).
"""
