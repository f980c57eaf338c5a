"""protocol: what goes over the wire - HTTP semantics, paths, manifests, bitfields, the HAVE stream, wire helpers.

Imports no node, store, roles, measure, sim or cli (import-linter contract in pyproject.toml); it uses policy, trust
(signatures, protection) and edgeswarm.errors.
"""
