"""trust: who may do what - signing and key pinning, tokens, access checks, protected content, TLS.

Imports no roles, measure, sim or cli (import-linter contracts in pyproject.toml); it uses protocol, node's HTTP
client (to fetch keys) and edgeswarm.errors.
"""
