"""node: what every daemon shares - the aiohttp app, file serving, the upstream client, metrics, connection limits.

May import protocol, policy, trust and store; never roles, measure, sim or cli.
"""
