"""trust: who may do what - signing and key pinning, tokens, access checks, protected content, TLS.

May import protocol, policy and node (an HTTP client to fetch keys); never roles, measure, sim or cli.
"""
