"""What a bundle request names, what comes back, and how it fails."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from kcd.errors import KcError


class BundleError(KcError):
    """The bundle cannot be built; `status`/`code` are the API error's."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(code, message, status=status)


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
