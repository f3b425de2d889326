"""HTTP/1.1 over a Unix socket: the part of the protocol kcd's answers use, and no more.

One request per connection (`Connection: close`), bodies framed by Content-Length,
chunked transfer coding, or the end of the connection. A body cut short raises
`IncompleteBody`, so a daemon that dies mid-answer is an error, never a short answer.

Why not `http.client`: it imports `email.parser` and `ssl` (together ~25–50 ms of every
kcctl command's start-up on these machines, more than the command's own work), for
features a Unix socket to our own daemon never needs (TLS, proxies, MIME headers,
keep-alive pools). This module imports `socket` and nothing else.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import IO

MAX_LINE = 64 * 1024  # status line, one header line, one chunk-size line
MAX_HEADERS = 200


class ProtocolError(Exception):
    """The peer did not speak HTTP/1.1 as this module reads it."""


class IncompleteBody(ProtocolError):
    """The connection ended before the body its framing announced."""


class Response:
    """A response whose body is read on demand: whole (`read`) or as it arrives (`iter_bytes`)."""

    def __init__(self, sock: socket.socket, reader: IO[bytes], status: int, headers: dict[str, str]):
        self._sock = sock
        self._reader = reader
        self.status_code = status
        self.headers = headers  # lower-cased names; a repeated header keeps its last value
        self._chunks = self._body()

    def iter_bytes(self) -> Iterator[bytes]:
        """The body in the pieces it arrives in (a chunk, or up to 64 KiB)."""
        return self._chunks

    def read(self) -> bytes:
        return b"".join(self._chunks)

    def iter_lines(self) -> Iterator[bytes]:
        """The body split on newlines (CR stripped), each line as soon as it is complete."""
        pending = b""
        for chunk in self._chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r")
        if pending:
            yield pending.rstrip(b"\r")

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def _body(self) -> Iterator[bytes]:
        if self.status_code in (204, 304) or 100 <= self.status_code < 200:
            return
        coding = self.headers.get("transfer-encoding", "").lower()
        if coding:
            if coding.rsplit(",", 1)[-1].strip() != "chunked":
                raise ProtocolError(f"unsupported transfer-encoding: {coding}")
            yield from self._chunked()
        elif "content-length" in self.headers:
            yield from self._exactly(_int(self.headers["content-length"], 10, "content-length"))
        else:
            while data := self._reader.read1(1 << 16):
                yield data

    def _exactly(self, n: int) -> Iterator[bytes]:
        while n > 0:
            data = self._reader.read1(min(n, 1 << 16))
            if not data:
                raise IncompleteBody(f"connection closed with {n} body bytes still to come")
            n -= len(data)
            yield data

    def _chunked(self) -> Iterator[bytes]:
        while True:
            size = _int(_line(self._reader).split(b";", 1)[0].strip(), 16, "chunk size")
            if size == 0:
                while _line(self._reader):  # trailer fields, up to the blank line
                    pass
                return
            yield b"".join(self._exactly(size))
            if _line(self._reader):
                raise ProtocolError("chunk data longer than its size line said")


def _line(reader: IO[bytes]) -> bytes:
    line = reader.readline(MAX_LINE + 1)
    if not line.endswith(b"\n"):
        if len(line) > MAX_LINE:
            raise ProtocolError("line too long")
        raise IncompleteBody("connection closed mid-line")
    return line.rstrip(b"\r\n")


def _int(text: bytes | str, base: int, what: str) -> int:
    try:
        value = int(text, base)
    except ValueError:
        raise ProtocolError(f"bad {what}: {text[:40]!r}") from None
    if value < 0:
        raise ProtocolError(f"bad {what}: {value}")
    return value


def _read_head(reader: IO[bytes]) -> tuple[int, dict[str, str]]:
    while True:  # skip interim 1xx answers
        status_line = _line(reader)
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        status = _int(parts[1], 10, "status")
        headers: dict[str, str] = {}
        while line := _line(reader):
            if len(headers) >= MAX_HEADERS:
                raise ProtocolError("too many header fields")
            name, sep, value = line.partition(b":")
            if not sep:
                raise ProtocolError(f"bad header line: {line[:80]!r}")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        if not 100 <= status < 200 or status == 101:
            return status, headers


def request(path: str, method: str, target: str, *, body: bytes | IO[bytes] | None = None,
            headers: dict[str, str] | None = None, timeout: float | None = 30.0,
            connect_timeout: float = 5.0) -> Response:
    """Send one request on a new connection to the socket at `path`; return once the
    status line and headers are in. OSErrors from connect propagate as they are (the
    caller turns ENOENT/EACCES/ECONNREFUSED into advice)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(min(timeout, connect_timeout) if timeout is not None else connect_timeout)
        sock.connect(path)
        sock.settimeout(timeout)
        head = [f"{method} {target} HTTP/1.1", "Host: kcd", "Connection: close"]
        size = None
        if isinstance(body, bytes):
            size = len(body)
        elif body is not None:
            size = body.seek(0, 2) - body.seek(0)
        if size is not None:
            head.append(f"Content-Length: {size}")
        head += [f"{k}: {v}" for k, v in (headers or {}).items() if k.lower() != "content-length"]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if isinstance(body, bytes):
            sock.sendall(body)
        elif body is not None:
            sock.sendfile(body)  # a packed workspace goes from disk to the socket without a copy
        reader = sock.makefile("rb")
        try:
            status, fields = _read_head(reader)
        except BaseException:
            reader.close()
            raise
        return Response(sock, reader, status, fields)
    except BaseException:
        sock.close()
        raise
