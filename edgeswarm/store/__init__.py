"""store: what a node keeps on disk - the piece store, the origin's catalogue, the usage ledger.

May import protocol, policy and trust; never roles, measure, sim or cli.
"""
