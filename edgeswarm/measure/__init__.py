"""measure: real daemons as processes, measured - the lab, scenarios, network namespaces, chaos, benches, demo.

May import every layer, roles included; it starts the daemons as processes through the CLI.
"""
