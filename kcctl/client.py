"""The socket client: HTTP/1.1 over AF_UNIX with httpx, errors turned into advice,
and the Bazel-style auto-start of a user-mode daemon."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

from kcd import API_VERSION
from kcd.api.paths import SocketPathError, private_runtime_dir, resolve_socket, user_state_dir


class DaemonUnreachable(Exception):
    """No daemon answers; the message says what to do about it."""


class DaemonError(Exception):
    """The daemon answered with an error status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


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


class Client:
    def __init__(self, socket_path: Path, timeout: float = 30.0):
        self.socket_path = socket_path
        self._http = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)),
                                  base_url="http://kcd", timeout=httpx.Timeout(timeout, connect=5.0))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kw)
        except (httpx.ConnectError, httpx.ConnectTimeout, FileNotFoundError, PermissionError) as exc:
            raise DaemonUnreachable(_advice(self.socket_path, exc)) from None
        except (httpx.RemoteProtocolError, httpx.NetworkError) as exc:  # it died mid-request
            raise DaemonUnreachable(_lost(self.socket_path, exc)) from None

    @staticmethod
    def _raise_for(resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        try:
            err = msgspec.json.decode(resp.content)["error"]
            raise DaemonError(resp.status_code, err.get("code", "error"), err.get("message", ""))
        except (msgspec.DecodeError, KeyError, TypeError):
            raise DaemonError(resp.status_code, "http_error", resp.text[:500]) from None

    def call(self, method: str, path: str, body: Any = None, params: dict | None = None) -> Any:
        kw: dict[str, Any] = {"params": params}
        if body is not None:
            kw["content"] = msgspec.json.encode(body)
            kw["headers"] = {"content-type": "application/json"}
        resp = self._send(method, path, **kw)
        self._raise_for(resp)
        return msgspec.json.decode(resp.content) if resp.content else None

    def text(self, path: str, params: dict | None = None) -> str:
        """GET a text resource (Prometheus metrics)."""
        resp = self._send("GET", path, params=params)
        self._raise_for(resp)
        return resp.text

    def call_raw(self, method: str, path: str, fileobj, content_type: str) -> Any:
        """Send a file object as the body (streamed), decode the JSON answer."""
        resp = self._send(method, path, content=_chunks(fileobj), headers={"content-type": content_type},
                          timeout=httpx.Timeout(600.0, connect=5.0))
        self._raise_for(resp)
        return msgspec.json.decode(resp.content)

    def stream_bytes(self, path: str) -> Iterator[bytes]:
        try:
            with self._http.stream("GET", path, timeout=httpx.Timeout(600.0, connect=5.0)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._raise_for(resp)
                yield from resp.iter_bytes()
        except (httpx.ConnectError, FileNotFoundError, PermissionError) as exc:
            raise DaemonUnreachable(_advice(self.socket_path, exc)) from None
        except (httpx.RemoteProtocolError, httpx.NetworkError) as exc:
            raise DaemonUnreachable(_lost(self.socket_path, exc)) from None

    def stream_lines(self, path: str, params: dict | None = None) -> Iterator[bytes]:
        try:
            with self._http.stream("GET", path, params=params, timeout=httpx.Timeout(None, connect=5.0)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._raise_for(resp)
                for line in resp.iter_lines():
                    if line:
                        yield line.encode() if isinstance(line, str) else line
        except (httpx.ConnectError, FileNotFoundError, PermissionError) as exc:
            raise DaemonUnreachable(_advice(self.socket_path, exc)) from None
        except (httpx.RemoteProtocolError, httpx.NetworkError) as exc:  # kill -9 mid-stream
            raise DaemonUnreachable(_lost(self.socket_path, exc)) from None

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


def _chunks(fileobj, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := fileobj.read(size):
        yield chunk


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
