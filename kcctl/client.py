"""The socket client: HTTP/1.1 over AF_UNIX (`kcctl.http11`), JSON with the standard
library, errors turned into advice, and the Bazel-style auto-start of a user-mode daemon.

Every import here is paid by every kcctl command that talks to kcd, so this module
imports only what a request needs (`json` is ~20x cheaper to import than msgspec, and
kcctl's answers are small)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kcctl import http11
from kcctl.errors import DaemonError, DaemonUnreachable
from kcd import API_VERSION
from kcd.api.paths import SocketPathError, private_runtime_dir, resolve_socket, user_state_dir


def _advice(path: Path, exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    code = cause.errno if isinstance(cause, OSError) else None
    if code == errno.ENOENT or not path.exists():
        return (f"no kcd socket at {path}: the daemon is not running "
                "(start it with `kcctl daemon start`, or `systemctl start kcd.socket` on a host)")
    if code == errno.EACCES:
        try:
            import grp

            group = grp.getgrgid(path.stat().st_gid).gr_name
        except (KeyError, OSError):
            group = "kylecode"
        return (f"permission denied on {path}: add yourself to the group `{group}` "
                f"(sudo usermod -aG {group} $USER, then log in again)")
    if code == errno.ECONNREFUSED:
        return (f"nothing accepts connections on {path}: a stale socket from a daemon that died; "
                "restart it (`kcctl daemon start` or `systemctl restart kcd.socket`)")
    return f"cannot reach kcd at {path}: {exc}"


def _lost(path: Path, exc: BaseException) -> str:
    """One line for a connection the daemon dropped mid-answer: it stopped or died."""
    detail = (str(exc).splitlines() or [type(exc).__name__])[0]
    return f"kcd at {path} went away mid-answer (it stopped or died: {detail})"


_LOST = (http11.ProtocolError, ConnectionResetError, BrokenPipeError, TimeoutError)


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _quote(text: str) -> str:
    """Percent-encode a query component (RFC 3986 unreserved kept); urllib.parse would
    cost every command that passes a parameter a few ms of import."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode())


def _encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class Client:
    """A kcd control-API client: one HTTP/1.1 request per call over the Unix socket."""

    def __init__(self, socket_path: Path, timeout: float = 30.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def close(self) -> None:
        pass  # one connection per request: nothing held between them

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, method: str, path: str, *, params: dict | None = None, body: Any = None,
              headers: dict[str, str] | None = None, timeout: float | None | str = "default") -> http11.Response:
        if params:
            path += "?" + "&".join(f"{_quote(str(k))}={_quote(str(v))}" for k, v in params.items()
                                   if v is not None)
        try:
            return http11.request(str(self.socket_path), method, path, body=body, headers=headers,
                                  timeout=self.timeout if timeout == "default" else timeout)  # type: ignore[arg-type]
        except (FileNotFoundError, PermissionError, ConnectionRefusedError) as exc:
            raise DaemonUnreachable(_advice(self.socket_path, exc)) from None
        except _LOST as exc:  # it died mid-request
            raise DaemonUnreachable(_lost(self.socket_path, exc)) from None
        except OSError as exc:
            raise DaemonUnreachable(_advice(self.socket_path, exc)) from None

    def _send(self, method: str, path: str, **kw: Any) -> tuple[int, bytes]:
        resp = self._open(method, path, **kw)
        try:
            return resp.status_code, resp.read()
        except _LOST as exc:
            raise DaemonUnreachable(_lost(self.socket_path, exc)) from None
        finally:
            resp.close()

    @staticmethod
    def _raise_for(status: int, content: bytes) -> None:
        if status < 400:
            return
        try:
            err = json.loads(content)["error"]
            code, message = err.get("code", "error"), err.get("message", "")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DaemonError(status, "http_error", content[:500].decode(errors="replace")) from None
        raise DaemonError(status, code, message)

    def call(self, method: str, path: str, body: Any = None, params: dict | None = None) -> Any:
        data = headers = None
        if body is not None:
            data = _encode(body)
            headers = {"content-type": "application/json"}
        status, content = self._send(method, path, params=params, body=data, headers=headers)
        self._raise_for(status, content)
        return json.loads(content) if content else None

    def fetch(self, method: str, path: str, body: Any, *, timeout: float = 600.0) -> tuple[dict[str, str], bytes]:
        """Send a JSON body, get (lower-cased headers, raw bytes) back: a vendor bundle."""
        resp = self._open(method, path, body=_encode(body), timeout=timeout,
                          headers={"content-type": "application/json"})
        try:
            content = resp.read()
            headers = resp.headers
        except _LOST as exc:
            raise DaemonUnreachable(_lost(self.socket_path, exc)) from None
        finally:
            resp.close()
        self._raise_for(resp.status_code, content)
        return headers, content

    def text(self, path: str, params: dict | None = None) -> str:
        """GET a text resource (Prometheus metrics)."""
        status, content = self._send("GET", path, params=params)
        self._raise_for(status, content)
        return content.decode()

    def call_raw(self, method: str, path: str, fileobj, content_type: str) -> Any:
        """Send a file object as the body (streamed from disk), decode the JSON answer."""
        status, content = self._send(method, path, body=fileobj, timeout=600.0,
                                     headers={"content-type": content_type})
        self._raise_for(status, content)
        return json.loads(content)

    def _stream(self, path: str, params: dict | None, timeout: float | None, *, lines: bool) -> Iterator[bytes]:
        resp = self._open("GET", path, params=params, timeout=timeout)
        try:
            if resp.status_code >= 400:
                self._raise_for(resp.status_code, resp.read())
            yield from (resp.iter_lines() if lines else resp.iter_bytes())
        except _LOST as exc:  # kill -9 mid-stream
            raise DaemonUnreachable(_lost(self.socket_path, exc)) from None
        finally:
            resp.close()

    def stream_bytes(self, path: str) -> Iterator[bytes]:
        return self._stream(path, None, 600.0, lines=False)

    def stream_lines(self, path: str, params: dict | None = None) -> Iterator[bytes]:
        return (line for line in self._stream(path, params, None, lines=True) if line)

    def check_version(self) -> dict:
        info = self.call("GET", "/version")
        if int(info.get("min_api", "1")) > int(API_VERSION):
            raise DaemonError(0, "version_mismatch",
                              f"kcd {info.get('daemon')} needs API {info.get('min_api')}+, this kcctl speaks "
                              f"{API_VERSION}: upgrade kcctl")
        if int(info.get("api", "0")) < int(API_VERSION):
            raise DaemonError(0, "version_mismatch",
                              f"kcd {info.get('daemon')} is too old (API {info.get('api')}); this kcctl "
                              f"needs API {API_VERSION}: restart the daemon from this installation")
        return info


def _answers(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with Client(path, timeout=2.0) as c:
            c.call("GET", "/version")
        return True
    except (DaemonUnreachable, DaemonError):
        return False


def start_user_daemon(path: Path, *, timeout: float = 60.0, extra_args: list[str] | None = None,
                      echo=None) -> None:
    """Start `kcd` in the background on `path` and wait until it answers.

    An exclusive lock serialises concurrent kcctl processes; whoever loses the
    race finds the daemon already answering.
    """
    try:
        runtime = private_runtime_dir(path.parent)
    except SocketPathError as exc:
        raise DaemonUnreachable(str(exc)) from None
    log_dir = user_state_dir()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "kcd.log"
    # O_NOFOLLOW: a link planted as start.lock must not make us truncate or lock someone's file.
    try:
        lock_fd = os.open(runtime / "start.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DaemonUnreachable(f"cannot open {runtime / 'start.lock'}: {exc.strerror}") from None
    with os.fdopen(lock_fd, "r+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(path):
            return
        if echo:
            echo(f"starting kcd on {path} (log: {log_path})…")
        import subprocess  # only when a daemon has to be started

        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kcd", "serve", "--socket", str(path), "--idle-exit", "10800",
                 *(extra_args or [])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                close_fds=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _answers(path):
                return
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise DaemonUnreachable("kcd exited during start-up (exit code "
                                        f"{proc.returncode}); last log lines:\n" + "\n".join(tail))
            time.sleep(0.05)
        raise DaemonUnreachable(f"kcd did not answer on {path} within {timeout:.0f}s; see {log_path}")


def connect(explicit_socket: str | None, *, autostart: bool, echo=None) -> Client:
    """Resolve the socket, auto-start a user daemon when allowed, check versions."""
    try:
        path, how = resolve_socket(explicit_socket)
    except SocketPathError as exc:
        raise DaemonUnreachable(str(exc)) from None
    if how == "user" and path.parent.exists():
        try:  # never trust a socket in a runtime directory someone else controls
            private_runtime_dir(path.parent)
        except SocketPathError as exc:
            raise DaemonUnreachable(str(exc)) from None
    client = Client(path)
    try:
        client.check_version()
        return client
    except DaemonUnreachable:
        # Only a per-user daemon is ever auto-started, never over an explicit choice.
        if not autostart or how != "user":
            client.close()
            raise
    start_user_daemon(path, echo=echo)
    client.check_version()
    return client
