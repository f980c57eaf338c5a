"""protocol: what goes over the wire - HTTP semantics, paths, manifests, bitfields, the HAVE stream, wire helpers.

May import the standard library, third-party libraries, policy and trust; never node, store, roles, measure, sim or cli.
"""
