"""Vendor bundles: one run's provider evidence as an allow-listed, scrubbed, manifested zip.

What goes in (each if present; nothing else, ever: no `workspace/`, `final_container_dir/`,
`raw/requests/`, prompts or seed archives):
  conversation/conversation.md, meta/capability_probes.json, meta/provider_metrics.json,
  meta/requests/*, errors/*, raw/responses/* (the original's default set, in its order),
  then meta/telemetry.jsonl (only the run's lines), meta/run.json, result.json,
  and optional attachments (a matrix result) under `matrix/`.
Only regular files directly inside those directories are taken; a symlink anywhere on the
way is skipped and listed in the manifest.

Scrubbing, for every entry: JSON values under secret key names (`Redactor.obj`, so a run
written with `logging.redact: false` is still scrubbed), then the daemon's value-level
`Redactor` (known secret values, bearer tokens, `sk-…` keys), then local absolute paths
(run dir, runs root, state dir, homes, the config's directory, and any path ending in the
run dir's name) and local user names become placeholders. `*.b64` files are decoded,
scrubbed and re-encoded, since a secret inside base64 is invisible to the redactor.
A file is scrubbed whole and only then truncated to the per-file cap, so a cut can never
leave half a secret behind; files too large to read whole are left out.

Refusal: after scrubbing, every entry (and every `*.b64` entry decoded), SUMMARY.md and
MANIFEST.json are searched for the known secret values, verbatim and base64-encoded at any
alignment; any hit refuses the whole bundle (BundleError, nothing is returned). The same
check runs once more over the finished zip's entries.

MANIFEST.json lists every other entry with its size and sha256 (of the bytes in the zip),
the run id, the KyleCode version, the creation time and a redaction report per file.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import io
import json
import os
import pwd
import re
import stat
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from kcd import __version__
from kcd.api.bundle_check import MANIFEST, UnsafeEntryName, unzip_entries
from kcd.api.bundle_check import check_entry_name as _check_name
from kcd.observe.redact import MASK, Redactor, base64_cores
from kcd.observe.rundir import pretty_json

BUNDLE_SUFFIX = "_vendor_bundle.zip"
SUMMARY = "SUMMARY.md"
FORMAT = "kylecode-vendor-bundle/1"
ATTACHMENT_DIR = "matrix"

# (relative path, is a directory); the order is the zip's order.
ALLOW_LIST: tuple[tuple[str, bool], ...] = (
    ("conversation/conversation.md", False),
    ("meta/capability_probes.json", False),
    ("meta/provider_metrics.json", False),
    ("meta/requests", True),
    ("errors", True),
    ("raw/responses", True),
    ("meta/telemetry.jsonl", False),
    ("meta/run.json", False),
    ("result.json", False),
)
TELEMETRY = "meta/telemetry.jsonl"

PLACEHOLDERS = {
    "<RUN_DIR>": "the run's directory",
    "<RUNS_ROOT>": "the daemon's runs root",
    "<STATE_DIR>": "the daemon's state directory",
    "<CONFIG_DIR>": "the directory of the run's agent config",
    "<HOME>": "a local home directory",
    "<USER>": "a local user name",
}
# Accounts that name no person; replacing them would also mangle ordinary words
# (`"root"` is a config key).
GENERIC_USERS = frozenset({"root", "nobody", "daemon", "kylecode", "kcd"})
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TEXT_SUFFIXES = (".md", ".txt", ".jsonl")
_MASK_B = MASK.encode()


class BundleError(Exception):
    """The bundle cannot be built; `status`/`code` are the API error's."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Caps:
    file_bytes: int = 4 << 20  # per entry after scrubbing; longer ones are truncated (noted)
    total_bytes: int = 64 << 20  # all entries together; beyond it the bundle is refused
    read_bytes: int = 64 << 20  # larger files are left out: a partial read could cut a secret
    entries: int = 2000


class BundleAttachment(msgspec.Struct, forbid_unknown_fields=True):
    name: str  # a plain file name; stored as matrix/<name>
    content: str


class BundleRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/bundles`: `run` is a run id, a run directory's name, or its absolute path."""

    run: str
    matrix: list[BundleAttachment] = []


@dataclass(frozen=True)
class Bundle:
    name: str  # <run dir name>_vendor_bundle.zip
    data: bytes
    manifest: dict[str, Any]


# ---- naming a run -----------------------------------------------------------------------

def resolve_run_dir(runs_root: Path, ref: str | Path) -> Path:
    """The real path of a run directory: a direct child of the runs root, or BundleError.

    Relative references are taken from the runs root. `..` is refused outright, and the
    real path (symlinks resolved) must sit directly under the root's real path.
    """
    text = str(ref)
    if not text or "\x00" in text:
        raise BundleError(400, "invalid_run", "empty or malformed run reference")
    if ".." in PurePosixPath(text).parts:
        raise BundleError(400, "run_outside_runs_root", f"{text!r} contains '..'; name a run by its id "
                          "or by its directory under the runs root")
    root = Path(os.path.realpath(runs_root))
    candidate = Path(text) if os.path.isabs(text) else Path(runs_root) / text
    real = Path(os.path.realpath(candidate))
    if real.parent != root:
        raise BundleError(400, "run_outside_runs_root",
                          f"{text!r} resolves to {real}, which is not a run directory directly under "
                          f"the runs root {root}")
    if not real.is_dir():
        raise BundleError(404, "run_not_found", f"no run directory {real.name!r} under the runs root")
    return real


@dataclass(frozen=True)
class RunFacts:
    """What the scrubber needs to know about the run, read from its unscrubbed files."""

    run_id: str | None = None
    config_path: str | None = None
    peer_uid: int | None = None


def run_facts(run_dir: Path) -> RunFacts:
    meta = _load_json(run_dir / "meta" / "run.json")
    index = _load_json(run_dir / "conversation" / "index.json")
    run_id = meta.get("run_id") or index.get("run_id") or index.get("session_id")
    peer = meta.get("peer") if isinstance(meta.get("peer"), dict) else {}
    return RunFacts(run_id=str(run_id) if run_id else None,
                    config_path=meta.get("config_path") if isinstance(meta.get("config_path"), str) else None,
                    peer_uid=peer.get("uid") if isinstance(peer.get("uid"), int) else None)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def local_identities(uids: Iterable[int | None], env_home: str | None = None) -> tuple[list[str], list[str]]:
    """(user names, home directories) of the daemon's user and the given uids."""
    users, homes = [], [env_home or ""]
    try:
        users.append(getpass.getuser())
    except (KeyError, OSError):  # no USER/LOGNAME and no passwd entry (some containers)
        pass
    for uid in {os.getuid(), *(u for u in uids if u is not None)}:
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            continue
        users.append(entry.pw_name)
        homes.append(entry.pw_dir)
    return users, homes


# ---- scrubbing ------------------------------------------------------------------------------

@dataclass
class Counts:
    secrets_masked: int = 0  # new ***REDACTED*** tokens put in by this bundle
    already_masked: int = 0  # tokens the run's writer had put in already
    known_secret_values: int = 0  # verbatim known values found before scrubbing
    paths_replaced: int = 0
    user_names_replaced: int = 0

    def add(self, other: Counts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class Scrubber:
    """Immutable after construction; one per bundle."""

    def __init__(self, redactor: Redactor, *, paths: Mapping[str, str] | Iterable[tuple[str, str]] = (),
                 users: Iterable[str] = (), run_dir_name: str | None = None):
        self.redactor = redactor
        pairs = paths.items() if isinstance(paths, Mapping) else paths
        # Longest first, so the run dir wins over the runs root, and the root over a home.
        by_path = {os.path.normpath(p): ph for p, ph in pairs if p and os.path.normpath(p) != "/"}
        ordered = sorted(by_path, key=len, reverse=True)
        self._placeholder = {p.encode(): by_path[p].encode() for p in ordered}
        # Whole path prefixes only: `/root` must not match inside `/var/root` or `/rootfs`.
        self._paths = (re.compile(rb"(?<![\w.-])(" + b"|".join(re.escape(p.encode()) for p in ordered)
                                  + rb")(?![\w-])") if ordered else None)
        # Any other absolute path to the run dir (a symlinked root, a copy under /tmp).
        self._run_name = run_dir_name.encode() if run_dir_name else None
        self._run_path = (re.compile(rb"(?:/[^\s\"'<>/`]+)+/" + re.escape(self._run_name) + rb"(?![\w-])")
                          if self._run_name else None)
        names = sorted({u for u in users if u and len(u) >= 3 and u not in GENERIC_USERS}, key=len, reverse=True)
        self.users = tuple(names)
        self._users = (re.compile(rb"(?<![\w.-])(?:" + b"|".join(re.escape(u.encode()) for u in names)
                                  + rb")(?![\w-])") if names else None)
        known = [v.encode() for v in redactor.known_values]
        self._known = re.compile(b"|".join(re.escape(v) for v in known)) if known else None
        # Base64 of a known value (a net after scrubbing; shorter cores than the redactor masks).
        self._needles = tuple(sorted({n.encode() for v in known for n in base64_cores(v, min_length=8)}))

    def scrub(self, data: bytes, source: bytes | None = None) -> tuple[bytes, Counts]:
        """`data` scrubbed; secrets are counted against `source` (the file as read, before any
        key-level masking already replaced some of them), by default `data` itself."""
        source = data if source is None else source
        counts = Counts(already_masked=source.count(_MASK_B),
                        known_secret_values=len(self._known.findall(source)) if self._known else 0)
        data = self.redactor.bytes(data)
        if self._paths is not None:
            data, n = self._paths.subn(lambda m: self._placeholder[m.group(1)], data)
            counts.paths_replaced += n
        if self._run_path is not None and self._run_name in data:
            data, n = self._run_path.subn(b"<RUN_DIR>", data)
            counts.paths_replaced += n
        if self._users is not None:
            data, counts.user_names_replaced = self._users.subn(b"<USER>", data)
        counts.secrets_masked = max(data.count(_MASK_B) - counts.already_masked, 0)
        return data, counts

    def leaks(self, data: bytes) -> bool:
        """Whether a known secret value is still in `data`, verbatim or base64-encoded."""
        return self.redactor.contains_secret(data) or any(n in data for n in self._needles)


def _decode_b64(data: bytes) -> bytes | None:
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _json_keys_scrubbed(data: bytes, redactor: Redactor) -> bytes:
    """Values under secret key names masked; the file's own bytes if nothing changes.
    Provider bodies are not ours: junk or absurd nesting falls back to byte-level scrubbing."""
    try:
        value = json.loads(data)
        cleaned = redactor.obj(value)
    except (ValueError, RecursionError):
        return data
    return data if cleaned == value else pretty_json(cleaned)


def _run_lines(data: bytes, run_id: str | None) -> tuple[list[bytes], int]:
    """The run's telemetry lines (and lines naming no run); lines of other runs are counted."""
    kept, dropped = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            owner = json.loads(line).get("run_id")
        except (ValueError, AttributeError, RecursionError):
            owner = None  # junk or a non-object: the exporter skips it itself; scrubbing still applies
        if run_id is not None and owner is not None and owner != run_id:
            dropped += 1
        else:
            kept.append(line)
    return kept, dropped


def _jsonl_keys_scrubbed(lines: list[bytes], redactor: Redactor) -> bytes:
    out = []
    for line in lines:
        try:
            event = json.loads(line)
            cleaned = redactor.obj(event)
        except (ValueError, RecursionError):
            event = cleaned = None
        if isinstance(event, dict) and cleaned != event:
            line = json.dumps(cleaned, separators=(",", ":"), ensure_ascii=False).encode()
        out.append(line + b"\n")
    return b"".join(out)


def scrub_entry(name: str, data: bytes, scrubber: Scrubber, run_id: str | None = None) -> tuple[bytes, Counts, int]:
    """One entry's bundle bytes, its redaction counts, and dropped telemetry lines."""
    if name.endswith(".b64"):
        decoded = _decode_b64(data)
        if decoded is not None:
            clean, counts = scrubber.scrub(decoded)
            return (data if clean == decoded else base64.b64encode(clean)), counts, 0
    dropped, source = 0, data
    if name.endswith(".jsonl"):
        lines, dropped = _run_lines(data, run_id)
        source = b"".join(line + b"\n" for line in lines)
        data = _jsonl_keys_scrubbed(lines, scrubber.redactor)
    elif name.endswith(".json"):
        data = _json_keys_scrubbed(data, scrubber.redactor)
    clean, counts = scrubber.scrub(data, source)
    return clean, counts, dropped


def _entry_leaks(name: str, data: bytes, scrubber: Scrubber) -> bool:
    if scrubber.leaks(data):
        return True
    decoded = _decode_b64(data) if name.endswith(".b64") else None
    return decoded is not None and scrubber.leaks(decoded)


def _truncate(name: str, data: bytes, limit: int) -> bytes:
    if len(data) <= limit:
        return data
    cut = data[:limit]
    if name.endswith(_TEXT_SUFFIXES):  # keep whole lines (whole telemetry events)
        newline = cut.rfind(b"\n")
        if newline > 0:
            cut = cut[:newline + 1]
    return cut


# ---- collecting -----------------------------------------------------------------------------

def check_entry_name(name: str) -> str:
    """A zip entry name that cannot escape wherever the zip is unpacked (no zip-slip)."""
    try:
        return _check_name(name)
    except UnsafeEntryName as exc:
        raise BundleError(400, "unsafe_entry_name", str(exc)) from None


def _is_plain(path: Path, run_dir: Path) -> bool:
    """A path with no symlink anywhere between the run dir and itself."""
    return os.path.realpath(path) == str(path) and str(path).startswith(str(run_dir) + os.sep)


@dataclass
class _Collected:
    files: list[tuple[str, Path, int]] = field(default_factory=list)  # (entry name, path, size)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def collect(run_dir: Path, caps: Caps = Caps()) -> _Collected:
    """The allow-listed files of a run directory (given as its real path)."""
    found = _Collected()
    for rel, is_dir in ALLOW_LIST:
        path = run_dir / rel
        if not os.path.lexists(path):
            continue
        if not _is_plain(path, run_dir):
            found.skipped.append({"path": rel, "reason": "symlink"})
            continue
        if is_dir:
            if not path.is_dir():
                continue
            candidates = sorted((f"{rel}/{entry.name}", Path(entry.path)) for entry in os.scandir(path))
        else:
            candidates = [(rel, path)]
        for name, file_path in candidates:
            try:
                st = os.lstat(file_path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                if stat.S_ISLNK(st.st_mode):
                    found.skipped.append({"path": name, "reason": "symlink"})
                continue  # sub-directories are not in the allow-list
            if st.st_size > caps.read_bytes:
                found.skipped.append({"path": name, "reason": f"larger than {caps.read_bytes} bytes"})
                continue
            try:
                found.files.append((check_entry_name(name), file_path, st.st_size))
            except BundleError:
                found.skipped.append({"path": repr(name), "reason": "unsafe file name"})
    if len(found.files) > caps.entries:
        raise BundleError(413, "bundle_too_large", f"the run has {len(found.files)} files to bundle; "
                          f"the cap is {caps.entries}")
    return found


def _read_regular(path: Path) -> bytes:
    """Read without following a symlink swapped in since `collect` looked."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


# ---- building -------------------------------------------------------------------------------

def make_scrubber(redactor: Redactor, run_dir: Path, *, runs_root: Path, state_dir: Path | None = None,
                  homes: Iterable[str] = (), users: Iterable[str] = (),
                  config_path: str | None = None) -> Scrubber:
    paths: list[tuple[str, str]] = []
    for home in homes:
        if home:
            paths += [(home, "<HOME>"), (os.path.realpath(home), "<HOME>")]
    if config_path and os.path.isabs(config_path):
        paths.append((os.path.dirname(config_path), "<CONFIG_DIR>"))
    if state_dir is not None:
        paths += [(str(state_dir), "<STATE_DIR>"), (os.path.realpath(state_dir), "<STATE_DIR>")]
    paths += [(str(runs_root), "<RUNS_ROOT>"), (os.path.realpath(runs_root), "<RUNS_ROOT>"),
              (str(run_dir), "<RUN_DIR>"), (os.path.realpath(run_dir), "<RUN_DIR>")]
    return Scrubber(redactor, paths=dict(paths), users=users, run_dir_name=run_dir.name)


def build_bundle(run_dir: Path, scrubber: Scrubber, *, run_id: str | None, run_status: str | None = None,
                 attachments: Sequence[BundleAttachment] = (), caps: Caps = Caps(),
                 now: datetime | None = None) -> Bundle:
    """The bundle of `run_dir` (a real path already checked by `resolve_run_dir`)."""
    created = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    collected = collect(run_dir, caps)
    entries: dict[str, bytes] = {}
    files: list[dict[str, Any]] = []
    totals = Counts()
    sources = [(name, lambda p=path: _read_regular(p), size) for name, path, size in collected.files]
    for att in attachments:
        if not _SAFE_NAME.fullmatch(att.name) or att.name in (".", ".."):
            raise BundleError(400, "unsafe_entry_name", f"refusing the attachment name {att.name!r}: "
                              "give a plain file name")
        blob = att.content.encode("utf-8", "surrogateescape")
        sources.append((check_entry_name(f"{ATTACHMENT_DIR}/{att.name}"), lambda b=blob: b, len(blob)))
    for name, read, size in sources:
        if name in entries:
            raise BundleError(400, "duplicate_entry", f"two bundle entries named {name!r}")
        clean, counts, dropped = scrub_entry(name, read(), scrubber, run_id)
        kept = _truncate(name, clean, caps.file_bytes)
        row: dict[str, Any] = {"path": name, "size": len(kept), "sha256": hashlib.sha256(kept).hexdigest(),
                               "source_size": size, "truncated": len(kept) < len(clean),
                               "redaction": counts.as_dict()}
        if len(kept) < len(clean):
            row["truncated_note"] = f"kept the first {len(kept)} of {len(clean)} scrubbed bytes (per-file cap)"
        if dropped:
            row["other_runs_lines_dropped"] = dropped
        entries[name] = kept
        files.append(row)
        totals.add(counts)
        _check_total(sum(len(b) for b in entries.values()), caps)
    summary, counts = scrubber.scrub(render_summary(entries, run_id=run_id, run_status=run_status,
                                                    run_name=run_dir.name, created=created).encode())
    totals.add(counts)
    files.insert(0, {"path": SUMMARY, "size": len(summary), "sha256": hashlib.sha256(summary).hexdigest(),
                     "source_size": len(summary), "truncated": False, "redaction": counts.as_dict()})
    manifest = {
        "format": FORMAT, "run_id": run_id, "run": run_dir.name, "run_status": run_status,
        "kylecode_version": __version__, "created_utc": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "note": f"{MANIFEST} lists every other entry; sha256 and size are of the bytes in this zip",
        "files": files, "skipped": collected.skipped,
        "redaction": {"totals": totals.as_dict(), "placeholders": PLACEHOLDERS,
                      "known_secret_values_checked": len(scrubber.redactor.known_values),
                      "user_names_replaced_for": len(scrubber.users),
                      "verdict": "clean: no known secret value, verbatim or base64-encoded, remains"},
        "caps": {"file_bytes": caps.file_bytes, "total_bytes": caps.total_bytes, "read_bytes": caps.read_bytes,
                 "entries": caps.entries},
    }
    manifest_bytes, _ = scrubber.scrub(pretty_json(manifest))
    ordered = {MANIFEST: manifest_bytes, SUMMARY: summary, **entries}
    _refuse_leaks(ordered, scrubber)
    _check_total(sum(len(b) for b in ordered.values()), caps)
    data = _zip(ordered, created)
    _refuse_leaks(dict(unzip_entries(data)), scrubber)  # what was written, not what was meant to be
    # The name travels in an HTTP header and becomes a client's file name: plain characters only.
    stem = run_dir.name if _SAFE_NAME.fullmatch(run_dir.name) else f"run_{hashlib.sha256(data).hexdigest()[:12]}"
    return Bundle(name=f"{stem}{BUNDLE_SUFFIX}", data=data, manifest=manifest)


def _check_total(total: int, caps: Caps) -> None:
    if total > caps.total_bytes:
        raise BundleError(413, "bundle_too_large", f"the scrubbed bundle would hold more than {caps.total_bytes} "
                          f"bytes (the total cap; {total} so far)")


def _refuse_leaks(entries: Mapping[str, bytes], scrubber: Scrubber) -> None:
    for name, data in entries.items():
        if _entry_leaks(name, data, scrubber):
            raise BundleError(422, "bundle_refused",
                              f"refusing the bundle: a known secret value would remain in {name} after "
                              "scrubbing (e.g. base64-encoded in a field); nothing was written")


def _zip(entries: Mapping[str, bytes], created: datetime) -> bytes:
    buf = io.BytesIO()
    stamp = created.timetuple()[:6]
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(check_entry_name(name), date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


# ---- SUMMARY.md ---------------------------------------------------------------------------

_ATTEMPT_FILE = re.compile(r"turn_(\d+)(?:_attempt_(\d+))?\.json$")


def _parsed(entries: Mapping[str, bytes], name: str) -> Any:
    try:
        return json.loads(entries[name])
    except (KeyError, ValueError, RecursionError):
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return " ".join(str(value).split()).replace("|", "\\|")[:160]


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines if len(lines) > 2 else ["(none)"]


def _telemetry(entries: Mapping[str, bytes]) -> list[dict[str, Any]]:
    events = []
    for line in entries.get(TELEMETRY, b"").splitlines():
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _attempts(entries: Mapping[str, bytes], telemetry: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per provider attempt: structured requests, enriched by the raw response records;
    telemetry when the run has no structured requests (the original's runs)."""
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    for prefix in ("meta/requests/", "raw/responses/"):
        for name in entries:
            m = _ATTEMPT_FILE.fullmatch(name[len(prefix):]) if name.startswith(prefix) else None
            record = _parsed(entries, name) if m else None
            if not isinstance(record, dict) or (prefix == "raw/responses/" and m and m.group(2) is None):
                continue  # turn_<N>.response.json is the successful body, not an attempt record
            key = (int(m.group(1)), _int(m.group(2) or record.get("attempt"), 1))  # type: ignore[union-attr]
            row = rows.setdefault(key, {"turn": key[0], "attempt": key[1]})
            for src, dst in (("route", "route"), ("kind", "kind"), ("status_code", "status"),
                             ("request_id", "request_id"), ("timestamp_utc", "time"), ("latency", "latency"),
                             ("latency_s", "latency"), ("classification", "outcome"),
                             ("html_detected", "html")):
                if record.get(src) is not None and row.get(dst) is None:
                    row[dst] = record[src]
            if row.get("outcome") is None and prefix == "raw/responses/" and record.get("ok") is True:
                row["outcome"] = "ok"
    if not rows:
        for ev in telemetry:
            if ev.get("event") == "llm.attempt":
                key = (_int(ev.get("turn"), 0), _int(ev.get("attempt"), len(rows) + 1))
                rows[key] = {"turn": key[0], "attempt": key[1], "route": ev.get("route"), "kind": ev.get("kind"),
                             "status": ev.get("status_code"), "request_id": ev.get("request_id"),
                             "time": ev.get("ts"), "latency": ev.get("latency_s"), "outcome": ev.get("outcome")}
    return [rows[k] for k in sorted(rows)]


def _window(run: dict[str, Any], attempts: list[dict[str, Any]], telemetry: list[dict[str, Any]]) -> list[str]:
    timings = _dict(run.get("timings"))
    lines = []
    if timings.get("started_at") or timings.get("created_at"):
        duration = f" ({timings['duration_s']} s)" if timings.get("duration_s") is not None else ""
        lines.append(f"- Run: {timings.get('started_at') or timings.get('created_at')} → "
                     f"{timings.get('ended_at') or 'not ended'}{duration}")
    times = sorted(str(a["time"]) for a in attempts if a.get("time"))
    if times:
        lines.append(f"- Provider calls: {times[0]} → {times[-1]}")
    stamps = sorted(str(e["ts"]) for e in telemetry if isinstance(e.get("ts"), str))
    if stamps:
        lines.append(f"- Telemetry: {stamps[0]} → {stamps[-1]}")
    return lines or ["- (no timestamps in the bundle)"]


def render_summary(entries: Mapping[str, bytes], *, run_id: str | None, run_status: str | None,
                   run_name: str, created: datetime) -> str:
    """SUMMARY.md for the provider's support team, from the already scrubbed entries."""
    metrics = _dict(_parsed(entries, "meta/provider_metrics.json"))
    result = _dict(_parsed(entries, "result.json"))
    run = _dict(_parsed(entries, "meta/run.json"))
    probes = _list(_parsed(entries, "meta/capability_probes.json"))
    telemetry = _telemetry(entries)
    attempts = _attempts(entries, telemetry)
    totals = _dict(metrics.get("summary"))
    routes = _dict(metrics.get("routes"))
    fallbacks = [f for f in _list(metrics.get("fallbacks")) if isinstance(f, dict)]
    convo = entries.get("conversation/conversation.md", b"").decode("utf-8", "replace")
    request_ids = sorted({str(a["request_id"]) for a in attempts if a.get("request_id")})
    status = f"{result.get('exit_reason') or '-'}" + (" (completed)" if result.get("completed") else
                                                     " (not completed)" if result else "")
    out = [
        f"# KyleCode vendor bundle: run {run_id or run_name}", "",
        "Prepared for the provider's support team. Times are UTC. Secret values, local paths and user",
        "names are replaced by placeholders (`***REDACTED***`, `<RUN_DIR>`, `<HOME>`, `<USER>`; see",
        f"{MANIFEST}). Bundle created {created.isoformat(timespec='seconds').replace('+00:00', 'Z')} by KyleCode "
        f"{__version__}.", "",
        "## At a glance", "",
        f"- Run: `{run_id or '-'}` (`{run_name}`){f', status {run_status}' if run_status else ''}",
        f"- Primary route: `{run.get('route') or '-'}`; served by `{result.get('served_route') or '-'}`",
        f"- Exit: {status}, {result.get('steps', '-')} steps",
        f"- Calls: {totals.get('calls', '-')} ({totals.get('success', '-')} ok, {totals.get('errors', '-')} errors); "
        f"HTML errors: {totals.get('html_errors', '-')}; retries: {totals.get('retries', '-')}; fallbacks: "
        f"{len(fallbacks)}; circuit skips: {totals.get('circuit_skips', '-')}",
        f"- Upstream request ids: {len(request_ids)} (table below)",
    ]
    if result.get("error"):
        out.append(f"- Error: {_cell(result.get('error_type'))}: {_cell(result['error'])}")
    if result.get("hint"):
        out.append(f"- Hint: {_cell(result['hint'])}")
    out += ["", "## Time window", "", *_window(run, attempts, telemetry)]
    out += ["", "## Routes", "", *_table(
        ("Route", "Calls", "OK", "Errors", "HTML errors", "Retries", "Stream calls", "Status codes",
         "Latency avg / max (s)"),
        ((f"`{name}`", r.get("calls"), r.get("success"), r.get("errors"), r.get("html_errors"), r.get("retries"),
          r.get("stream_calls"),
          ", ".join(f"{code}×{n}" for code, n in sorted(_dict(r.get("status_codes")).items())),
          f"{r.get('latency_avg', '-')} / {r.get('latency_max', '-')}")
         for name, r in sorted(routes.items()) if isinstance(r, dict)))]
    out += ["", "## Fallbacks", "", *_table(("From", "To", "Reason"),
                                             ((f.get("from"), f.get("to"), f.get("reason")) for f in fallbacks))]
    markers = {m: convo.count(m) for m in ("[fallback_route]", "[stream-policy]", "[tool-policy]", "[circuit-open]",
                                           "[provider-retry]", "[provider-error]", "[streaming-disabled]")}
    overrides = [(kind, o.get("route"), o.get("reason")) for kind, key in (("stream", "stream_overrides"),
                                                                           ("tool", "tool_overrides"))
                 for o in _list(metrics.get(key)) if isinstance(o, dict)]
    overrides += [("circuit skip", r, "breaker open") for r in _list(metrics.get("circuit_skips"))
                  if isinstance(r, str)]
    out += ["", "## Policy decisions", "", *_table(("Kind", "Route", "Reason"), overrides), "",
            "Transcript markers (conversation/conversation.md): "
            + ", ".join(f"`{m}` ×{n}" for m, n in markers.items() if n) if any(markers.values())
            else "Transcript markers: none."]
    out += ["", "## Attempts and upstream request ids", "", *_table(
        ("Turn", "Attempt", "Route", "Kind", "HTTP status", "Outcome", "Upstream request id", "Time", "Latency (s)"),
        ((a.get("turn"), a.get("attempt"), a.get("route"), a.get("kind"), a.get("status"),
          (a.get("outcome") or "-") + (" (HTML)" if a.get("html") else ""), a.get("request_id"), a.get("time"),
          a.get("latency")) for a in attempts))]
    out += ["", "## Capability probes", "", *_table(
        ("Route", "Attempted", "Stream", "Tool stream", "JSON mode", "Note"),
        ((p.get("model_id") or p.get("route"), p.get("attempted"), p.get("stream_success"),
          p.get("tool_stream_success"), p.get("json_mode_success"), p.get("skipped_reason") or p.get("error"))
         for p in probes if isinstance(p, dict)))]
    html = sorted(n for n in entries if n.endswith(".html_excerpt.txt"))
    errors = sorted(n for n in entries if n.startswith("errors/"))
    out += ["", "## Where to look", "",
            f"- Error payloads: {', '.join(f'`{n}`' for n in errors) or 'none'}",
            f"- HTML excerpts: {', '.join(f'`{n}`' for n in html) or 'none'}",
            "- Structured requests (sanitised headers, body excerpts): `meta/requests/`",
            "- Raw response diagnostics (headers, excerpts, base64 bodies): `raw/responses/`",
            f"- Every file with its size and sha256: `{MANIFEST}`", ""]
    return "\n".join(out)
