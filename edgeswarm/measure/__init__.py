"""measure: running the real thing and counting - the lab, scenarios, network namespaces, chaos, benches, demo.

May import every layer, roles included (it starts them as processes, and drives the CLI).
"""
