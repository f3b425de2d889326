"""Who owns the client end of a loopback TCP connection: from the kernel's table."""

from __future__ import annotations

import encodings.idna  # noqa: F401  (loaded as root: connecting as another uid cannot read the stdlib here)
import os
import socket
from pathlib import Path

import pytest

from kcd.viewer.tcpowner import loopback_peer_uid

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def test_the_client_row_is_found_by_both_ends(tmp_path: Path) -> None:
    # 127.0.0.1:40000 -> 127.0.0.1:8080 owned by 1001; the server's row (owned by 0) and a
    # listening socket on the client's port must not be mistaken for it.
    (tmp_path / "tcp").write_text(HEADER + "\n".join([
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 0 1 1",
        "   1: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0 0 2 1",
        "   2: 0200007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1002 0 3 1",
        "   3: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1001 0 4 1",
        "   4: garbage"]) + "\n")
    assert loopback_peer_uid(("127.0.0.1", 40000), ("127.0.0.1", 8080), tmp_path) == 1001
    assert loopback_peer_uid(("127.0.0.2", 40000), ("127.0.0.1", 8080), tmp_path) == 1002
    assert loopback_peer_uid(("127.0.0.1", 40001), ("127.0.0.1", 8080), tmp_path) is None
    assert loopback_peer_uid(("192.0.2.7", 40000), ("127.0.0.1", 8080), tmp_path) is None  # not loopback
    assert loopback_peer_uid(None, ("127.0.0.1", 8080), tmp_path) is None
    assert loopback_peer_uid(("127.0.0.1", 40000), ("127.0.0.1", 8080), tmp_path / "missing") is None


def test_ipv6_rows_are_read(tmp_path: Path) -> None:
    (tmp_path / "tcp6").write_text(
        "  sl  local_address remote_address st tx rx tr tm retr uid timeout inode\n"
        "   0: 00000000000000000000000001000000:9C40 00000000000000000000000001000000:1F90 01 0:0 0:0 0 1003 0 9\n"
        "   1: 0000000000000000FFFF00000100007F:9C41 0000000000000000FFFF00000100007F:1F90 01 0:0 0:0 0 1004 0 9\n")
    assert loopback_peer_uid(("::1", 40000), ("::1", 8080), tmp_path) == 1003
    assert loopback_peer_uid(("127.0.0.1", 40001), ("127.0.0.1", 8080), tmp_path) == 1004  # v4-mapped


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to open a socket as another uid")
def test_a_real_connection_reports_the_uid_that_opened_it() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        os.seteuid(65534)
        try:
            client = socket.create_connection(server.getsockname())
        finally:
            os.seteuid(0)
        with client:
            conn, addr = server.accept()
            with conn:
                assert loopback_peer_uid(addr, server.getsockname()) == 65534
        mine = socket.create_connection(server.getsockname())
        with mine:
            conn, addr = server.accept()
            with conn:
                assert loopback_peer_uid(addr, server.getsockname()) == 0
