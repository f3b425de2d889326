"""kcctl's start-up stays small, and its HTTP/1.1 reader is strict about what it reads.

The import checks run the real `kcctl` in a fresh interpreter and list `sys.modules` as it
exits, so a new top-level import anywhere on a command's path shows up here.
The HTTP tests serve hand-written bytes from a real Unix socket: the framings kcd's server
uses, and the ways a dying daemon cuts them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import click
import pytest

from kcctl import http11
from kcctl.cli import COMMANDS, main
from kcctl.client import Client
from kcctl.errors import DaemonError, DaemonUnreachable

# What no kcctl command that talks to kcd may import at start-up: the daemon's third-party
# stack, and the standard library's HTTP client (email.parser, ssl).
HEAVY = ("ray", "httpx", "httpcore", "anyio", "uvicorn", "aiohttp", "msgspec", "http.client", "ssl",
         "email", "kcctl.export")


SNOOP = """
import atexit, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write("\\n".join(sys.modules)))
from kcctl.cli import main
main(prog_name="kcctl")
"""


def imported(*args: str, tmp_path: Path) -> set[str]:
    """Every module a real `kcctl ARGS` process has loaded when it exits."""
    out = tmp_path / "modules.txt"
    subprocess.run([sys.executable, "-c", SNOOP, str(out), *args], capture_output=True, timeout=60, cwd=tmp_path)
    return set(out.read_text().split("\n"))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_help_imports_no_command_no_client_and_nothing_of_the_daemon(tmp_path: Path) -> None:
    mods = imported("--help", tmp_path=tmp_path)
    assert "click" in mods  # the check sees imports at all
    assert heavy(mods) == []
    assert sorted(m for m in mods if m == "kcd" or m.startswith("kcd.")) == []
    assert sorted(m for m in mods if m.startswith("kcctl.commands.") and m != "kcctl.commands.common") == []
    assert "kcctl.client" not in mods


def test_status_imports_only_its_own_module_and_the_socket_client(tmp_path: Path) -> None:
    mods = imported("--socket", str(tmp_path / "none.sock"), "--no-autostart", "status", tmp_path=tmp_path)
    assert {"kcctl.commands.status", "kcctl.client", "kcctl.http11"} <= mods
    assert heavy(mods) == []
    assert sorted(m for m in mods if m.startswith("kcctl.commands.")) == ["kcctl.commands.common",
                                                                          "kcctl.commands.status"]
    # The client needs the socket-path rules it shares with the daemon, and nothing else of it.
    assert sorted(m for m in mods if m.startswith("kcd")) == ["kcd", "kcd.api", "kcd.api.paths"]


def test_the_help_table_says_what_each_command_says_of_itself() -> None:
    ctx = click.Context(main)
    for name, text in COMMANDS.items():
        cmd = main.get_command(ctx, name)
        assert cmd is not None and cmd.name == name
        assert cmd.get_short_help_str(10_000) == click.Command(name, help=text).get_short_help_str(10_000), name
    assert main.get_command(ctx, "nope") is None


# ---- kcctl.http11 against a real socket -------------------------------------------------------

class OneShot:
    """A Unix socket that answers one connection with fixed bytes, then closes it."""

    def __init__(self, path: Path, answer: bytes, *, hold: threading.Event | None = None):
        self.path = path
        self.request = b""
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(str(path))
        self._srv.listen(1)
        self._answer = answer
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._srv.accept()
        with conn:
            conn.settimeout(5)
            while b"\r\n\r\n" not in self.request:
                self.request += conn.recv(65536)
            head, _, body = self.request.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            self.request = head + b"\r\n\r\n" + body
            conn.sendall(self._answer)
        self._srv.close()

    def join(self) -> None:
        self._thread.join(5)


def serve(tmp_path: Path, answer: bytes) -> OneShot:
    return OneShot(tmp_path / "s.sock", answer)


def test_content_length_body_and_the_request_sent(tmp_path: Path) -> None:
    srv = serve(tmp_path, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 11\r\n\r\n"
                          b'{"a": 1}\n  ')
    resp = http11.request(str(srv.path), "POST", "/v1/x?y=1", body=b'{"k":"v"}',
                          headers={"content-type": "application/json"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    assert resp.read() == b'{"a": 1}\n  '
    resp.close()
    srv.join()
    head = srv.request.split(b"\r\n")
    assert head[0] == b"POST /v1/x?y=1 HTTP/1.1"
    assert b"Content-Length: 9" in head and b"Connection: close" in head
    assert srv.request.endswith(b'\r\n\r\n{"k":"v"}')


def test_chunked_with_extensions_and_trailers_arrives_chunk_by_chunk(tmp_path: Path) -> None:
    srv = serve(tmp_path, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"6;ext=1\r\nline1\n\r\n" b"2\r\nli\r\n" b"4\r\nne2\n\r\n" b"0\r\nx-trailer: 1\r\n\r\n")
    resp = http11.request(str(srv.path), "GET", "/")
    assert list(resp.iter_lines()) == [b"line1", b"line2"]
    resp.close()


def test_a_file_body_is_sent_whole(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, more than one socket buffer
    (tmp_path / "f").write_bytes(data)
    srv = serve(tmp_path, b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
    with open(tmp_path / "f", "rb") as fh:
        resp = http11.request(str(srv.path), "POST", "/up", body=fh)
    assert resp.status_code == 201 and resp.read() == b"{}"
    resp.close()
    srv.join()
    assert srv.request.endswith(b"\r\n\r\n" + data)


def test_interim_answers_are_skipped_and_a_body_may_run_to_the_close(tmp_path: Path) -> None:
    srv = serve(tmp_path, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\n\r\nno such thing")
    resp = http11.request(str(srv.path), "GET", "/")
    assert resp.status_code == 404 and resp.read() == b"no such thing"
    resp.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",  # died mid-body
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nline\n\r\n",  # no last chunk
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n50\r\nshort",  # chunk cut short
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nline\n",  # cut before the CRLF
])
def test_a_body_cut_short_is_an_error_never_a_short_answer(tmp_path: Path, answer: bytes) -> None:
    srv = serve(tmp_path, answer)
    resp = http11.request(str(srv.path), "GET", "/")
    with pytest.raises(http11.IncompleteBody):
        resp.read()
    resp.close()


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (http11.MAX_LINE + 10) + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(http11.MAX_HEADERS + 1)) + b"\r\n",
])
def test_what_is_not_http_is_refused(tmp_path: Path, answer: bytes) -> None:
    srv = serve(tmp_path, answer)
    with pytest.raises(http11.ProtocolError):
        http11.request(str(srv.path), "GET", "/").read()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n",
])
def test_bad_framing_is_refused(tmp_path: Path, answer: bytes) -> None:
    srv = serve(tmp_path, answer)
    with pytest.raises(http11.ProtocolError):
        http11.request(str(srv.path), "GET", "/").read()


def test_the_client_turns_a_cut_answer_into_unreachable_and_an_error_body_into_daemon_error(tmp_path: Path) -> None:
    srv = serve(tmp_path, b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"trunc")
    with pytest.raises(DaemonUnreachable, match="went away mid-answer"):
        Client(srv.path).call("GET", "/v1/health")
    (tmp_path / "s.sock").unlink()
    body = b'{"error": {"code": "forbidden", "message": "not yours"}}'
    srv = serve(tmp_path, b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    with pytest.raises(DaemonError) as err:
        Client(srv.path).call("GET", "/v1/runs/x", params={"q": "a b&c=d/é"})
    assert (err.value.status, err.value.code, err.value.message) == (403, "forbidden", "not yours")
    srv.join()
    assert srv.request.startswith(b"GET /v1/runs/x?q=a%20b%26c%3Dd%2F%C3%A9 HTTP/1.1\r\n")


def test_no_socket_is_unreachable_with_advice(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnreachable, match="no kcd socket at"):
        Client(tmp_path / "none.sock").call("GET", "/version")
