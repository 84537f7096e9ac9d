"""Free ports on loopback.

The one ``free_port`` of the project (services, IOCs, agents, torch's data-parallel
rendezvous).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port", "port_open"]


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in
                  Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """Return a port free for both TCP and UDP on 127.0.0.1, outside the ephemeral range.

    A port the kernel handed out once (``bind(0)``) can be handed out again to any later
    socket. The CA repeater port is only sent to (beacons, clients registering with a
    repeater): when the kernel gave the same number to a CA client's search socket, that
    socket received a RepeaterRegister datagram and caproto's sync client raised
    ``RemoteProtocolError: bad command ID 0x18`` (seen once in a 2-process test run).
    """
    lo, hi = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32000) if lo > 32000 else rng.randrange(hi + 1, 65000)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind(("127.0.0.1", port))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free TCP+UDP port found on 127.0.0.1")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0
