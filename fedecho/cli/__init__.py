"""Command-line front ends: ``fedecho`` (train, simulate, demo, data, report, bench),
``fedecho-server`` (coordinator) and ``fedecho-client`` (site)."""
