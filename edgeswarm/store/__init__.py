"""store: what a node keeps on disk - the piece store, the origin's catalogue, the usage ledger.

Imports no roles, measure, sim or cli (import-linter contracts in pyproject.toml); it uses protocol, policy, trust
and edgeswarm.errors.
"""
