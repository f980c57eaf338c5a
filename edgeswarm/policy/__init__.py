"""policy: the decisions, deterministic and without I/O - piece picking, choking, tracking, source ranking, eviction.

Imports only the standard library, other policy modules and edgeswarm.errors (import-linter contract in
pyproject.toml, and tests/test_layers.py for any third-party package).
"""
