"""node: what every daemon shares - the aiohttp app, file serving, the upstream client, metrics, connection limits.

Imports no roles, measure, sim or cli (import-linter contracts in pyproject.toml); it uses protocol, policy, store
and edgeswarm.errors.
"""
