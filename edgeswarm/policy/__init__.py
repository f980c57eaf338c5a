"""policy: the decisions, sans-IO and deterministic - piece picking, choking, tracking, source ranking, eviction.

May import the standard library and other policy modules only: no I/O, no third-party library, no other layer.
"""
