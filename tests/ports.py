"""Ports for the tests' servers on 127.0.0.1, chosen below the kernel's ephemeral range.

Many tests stop a server and start it again on the same port while a client keeps reconnecting (a PLC restart,
an S3 outage, a database restart). A port from the ephemeral range (``ip_local_port_range``, 32768-60999 by
default) can be taken in that gap: by any outgoing connection's local port, or by the reconnecting client itself
(a TCP self-connect, when its local port equals the closed port it dials). The server then cannot bind again and
the test fails for a reason that has nothing to do with the code. Ports below that range are only ever used by
explicit binds, so a port handed out here stays the server's.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_FLOOR = 10000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing listens on right now, outside the ephemeral range, never handed out before in this process."""
    high = _ephemeral_low()
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(_FLOOR, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found in {_FLOOR}-{high}")
