"""sim: in memory and virtual time - the server-load model, traces, the swarm simulator, their reports.

Imports no role (import-linter contract in pyproject.toml); it uses policy, protocol and measure's report helpers.
"""
