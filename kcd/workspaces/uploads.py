"""Uploaded workspace archives waiting for their run.

A client uploads its directory as a tar (`POST /v1/workspaces`), then names the upload in
its run request. The archive is checked member by member (`tarcheck`) when it arrives; a
refused one is deleted. The run takes it (`UploadStore.take`) and moves it into its run
directory as the seed snapshot (`seed.SEED_ARCHIVE`).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from kcd.errors import BadRequest
from kcd.workspaces.archive import ArchiveTooLarge, UnsafeArchive, check_archive

UPLOAD_TTL_S = 3600.0


class UploadError(BadRequest, ValueError):
    """An upload that cannot be stored or found (bad archive, malformed or unknown id)."""

    def __init__(self, message: str):
        super().__init__("unsafe_archive", message)


class UploadStore:
    """Uploaded archives waiting for their run, under the daemon's state directory."""

    def __init__(self, root: Path, *, max_workspace_bytes: int):
        self.root = root
        self.max_workspace_bytes = max_workspace_bytes
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.prune()

    def new_path(self) -> tuple[str, Path]:
        upload_id = "u_" + secrets.token_hex(8)
        return upload_id, self.root / f"{upload_id}.tar"

    def check(self, path: Path) -> int:
        """Validate every member; the upload is deleted when it is refused."""
        try:
            with open(path, "rb") as fh:
                return check_archive(fh, max_bytes=self.max_workspace_bytes)
        except (UnsafeArchive, ArchiveTooLarge) as exc:
            path.unlink(missing_ok=True)
            raise UploadError(str(exc)) from None

    def take(self, upload_id: str) -> Path:
        if not upload_id.startswith("u_") or not upload_id[2:].isalnum():
            raise UploadError(f"malformed upload id {upload_id!r}")
        path = self.root / f"{upload_id}.tar"
        if not path.is_file():
            raise UploadError(f"no upload {upload_id!r} (uploads are kept {UPLOAD_TTL_S:.0f}s)")
        return path

    def prune(self) -> None:
        cutoff = time.time() - UPLOAD_TTL_S
        for path in self.root.glob("u_*.tar"):
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
