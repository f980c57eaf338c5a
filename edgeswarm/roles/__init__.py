"""roles: the daemons and their commands - origin, edge, peer (with its swarm), get, the tracker service.

Import neither measure, sim nor cli, and only cli, measure and other roles import a role (import-linter contracts
in pyproject.toml); they use every layer below: protocol, policy, trust, store, node.
"""
