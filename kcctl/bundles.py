"""Getting a vendor bundle from kcd: fetch, check against its manifest, write whole.

The daemon builds the bundle (POST /v1/bundles): it can read the run directory and knows the
secret values. The client only names the run and decides where the bytes land. Shared by
`kcctl bundle` and `kcctl incident`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

from kcctl.client import Client
from kcctl.commands.common import EXIT_NOT_COMPLETED, Ctx, fail
from kcctl.errors import DaemonError


BUNDLE_PREFIX = "[vendor-bundle]"
_BUNDLE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*_vendor_bundle\.zip"
_FAILED_BUNDLE = ("bundle_refused", "bundle_too_large")  # the run is fine; the bundle is not: exit 1


def run_ref(run: str) -> str:
    """An id or run-dir name goes as typed; a path is resolved here (the daemon's working
    directory is not ours), physically: `link/..` means the link target's parent, as in the
    shell, never a lexical shortcut back into the runs root. The daemon checks it again."""
    return os.path.realpath(run) if "/" in run or os.path.exists(run) else run


def fetch_bundle(client: Client, run: str, matrix_files: tuple[Path, ...] = ()) -> tuple[str, bytes]:
    """(file name, zip bytes) of RUN's bundle; DaemonError as the daemon says."""
    attachments = []
    for path in matrix_files:
        try:
            attachments.append({"name": path.name, "content": path.read_text(encoding="utf-8")})
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"cannot read {path} as UTF-8 text: {exc}", param_hint="--with-matrix")
    headers, content = client.fetch("POST", "/v1/bundles", {"run": run_ref(run), "matrix": attachments})
    name = headers.get("x-kc-bundle-name", "")
    if not re.fullmatch(_BUNDLE_NAME, name):  # never let the daemon pick a path
        raise DaemonError(502, "bad_response", f"kcd named the bundle {name!r}; not using that as a file name")
    return name, content


def write_file(path: Path, data: bytes) -> None:
    """Whole or not at all: a failed write leaves no half bundle behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def redaction_line(manifest: dict) -> str:
    t = manifest["redaction"]["totals"]
    return (f"{BUNDLE_PREFIX} run {manifest.get('run_id') or manifest['run']}: {len(manifest['files'])} files; "
            f"{t['secrets_masked']} secrets masked ({t['already_masked']} masked by the run already), "
            f"{t['paths_replaced']} local paths and {t['user_names_replaced']} user names replaced")


class BundleFailed(Exception):
    """kcd refused the bundle, or sent one that does not match its manifest."""


def get_bundle(obj: Ctx, run: str, matrix_files: tuple[Path, ...] = ()) -> tuple[str, bytes, dict]:
    """Fetch and check a bundle: (file name, bytes, manifest)."""
    from kcd.bundles.check import verify_bundle

    try:
        with obj.client() as client:
            name, data = fetch_bundle(client, run, matrix_files)
    except DaemonError as exc:
        if exc.code in _FAILED_BUNDLE:
            raise BundleFailed(exc.message) from None
        raise
    try:
        return name, data, verify_bundle(data)
    except (ValueError, KeyError) as exc:
        raise BundleFailed(f"the bundle kcd sent does not match its manifest: {exc}") from None


def get_bundle_or_exit(obj: Ctx, run: str, matrix_files: tuple[Path, ...] = ()) -> tuple[str, bytes, dict]:
    try:
        return get_bundle(obj, run, matrix_files)
    except BundleFailed as exc:
        fail(f"{BUNDLE_PREFIX} {exc}", EXIT_NOT_COMPLETED)
        raise  # unreachable: _fail exits
