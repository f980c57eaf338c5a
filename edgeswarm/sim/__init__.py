"""sim: in memory and virtual time - the server-load model, traces, the swarm simulator, their reports.

May import protocol, policy and measure's reports; never roles.
"""
