"""roles: the daemons and their commands - origin, edge, peer (with its swarm), get, the tracker service.

May import every layer below (protocol, policy, trust, store, node) and other roles; never measure or sim.
Only cli and measure import a role.
"""
