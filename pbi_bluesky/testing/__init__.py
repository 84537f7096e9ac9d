"""Real processes on loopback for the tests, the demos and the benchmarks.

One launcher
(:class:`Process`) and one :func:`free_port`, with the services (Tiled, Redis, PostgreSQL),
the simulated beamline IOC, the queue server and the agent built on them.
"""

from pbi_bluesky.testing.launch import Process, ServiceError, find_binary, free_port, port_open

__all__ = ["Process", "ServiceError", "find_binary", "free_port", "port_open"]
