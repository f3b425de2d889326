"""Which local user owns the other end of a loopback TCP connection (Linux `/proc/net/tcp`).

Browsers send a site's cookies to every port of 127.0.0.1, so on a shared host another local
user who gets your browser to open a page on their own loopback port receives your viewer
cookie, and could replay it. The viewer therefore also asks the kernel who owns the client's
socket, and accepts a session only from its own user's processes (or root's: a root-run
browser, as in CI). The connection's client socket is the row whose local end is the
client's address and port and whose remote end is ours.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

__all__ = ["loopback_peer_uid"]

_ESTABLISHED = "01"


def _address(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hexaddr)
    # the kernel prints each 32-bit word in host (little-endian) byte order
    addr = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
    return addr.ipv4_mapped or addr if isinstance(addr, ipaddress.IPv6Address) else addr


def _endpoint(host: str, port: int) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    addr = ipaddress.ip_address(host.strip("[]"))
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr, port


def loopback_peer_uid(client: tuple[str, int] | None, server: tuple[str, int] | None,
                      proc_net: Path = Path("/proc/net")) -> int | None:
    """The uid owning the client end of the loopback connection client -> server, or None
    (not loopback, not found, no /proc)."""
    if not client or not server:
        return None
    try:
        want_local, want_remote = _endpoint(*client), _endpoint(*server)
    except ValueError:
        return None
    if not want_local[0].is_loopback:
        return None
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != _ESTABLISHED:
                continue
            try:
                (la, lp), (ra, rp) = (f.rsplit(":", 1) for f in fields[1:3])
                if (int(lp, 16), int(rp, 16)) != (want_local[1], want_remote[1]):
                    continue
                if (_address(la), _address(ra)) == (want_local[0], want_remote[0]):
                    return int(fields[7])
            except ValueError:
                continue
    return None
