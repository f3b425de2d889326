"""Validate an uploaded tar (gzip'd or plain) in one streaming pass, in bounded memory.

`tarfile` reads a PAX extended header or a GNU long name whole into memory and
scans it with a regex before it knows whether it is sane: a 1.5 MB upload
declaring a 1 GB header cost 1.6 GB and held the GIL for 103 s. Here every
header is parsed from fixed 512-byte blocks; PAX and GNU long-name payloads
are capped before they are read; file contents are decompressed and skipped in
chunks; members, total size and links are checked as they stream by. An
archive that passes unpacks with `tarfile` without surprises.

Links: a symlink's target is resolved against the symlinks the archive has
already created (`sub/s1 -> ..` then `sub/s1/s2 -> ../..` leaves the root and
is refused), and no member may be written through a symlink. Hard links,
devices, FIFOs and sparse files are refused.

Standard library only.
"""

from __future__ import annotations

import posixpath
import zlib
from typing import IO

__all__ = ["ArchiveRefused", "ArchiveTooBig", "validate_tar"]

BLOCK = 512
MAX_EXTENDED_HEADER = 64 * 1024  # a PAX header or a GNU long name/link; real ones are < 1 KiB
_READ = 64 * 1024
_MAX_LINK_DEPTH = 40
_TRAILER_LIMIT = 1 << 20  # zero padding after the end-of-archive blocks (tar pads to 10 KiB records)
_REGULAR, _DIRECTORY, _SYMLINK = b"0\0", b"5", b"2"
_FORBIDDEN = {b"1": "hard link", b"3": "character device", b"4": "block device", b"6": "FIFO",
              b"S": "sparse file", b"V": "volume header", b"M": "multi-volume member"}


class ArchiveRefused(ValueError):
    """The archive is malformed or has a member we do not unpack."""


class ArchiveTooBig(ValueError):
    pass


class _Stream:
    """Exactly-n-byte reads from a gzip'd or plain file, decompressing in bounded chunks."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self._file = fileobj
        self._buf = bytearray()
        head = fileobj.read(2)
        self._inflate = zlib.decompressobj(wbits=31) if head == b"\x1f\x8b" else None
        self._pending = head
        self._eof = False

    def _fill(self, need: int) -> None:
        while len(self._buf) < need and not self._eof:
            if self._inflate is not None and self._inflate.unconsumed_tail:
                data = self._inflate.unconsumed_tail
            else:
                data = self._pending + self._file.read(_READ)
                self._pending = b""
                if not data:
                    if self._inflate is not None and not self._inflate.eof:
                        raise ArchiveRefused("the gzip stream is truncated")
                    self._eof = True
                    break
            if self._inflate is None:
                self._buf += data
                continue
            try:
                # max_length bounds the output of one call: a bomb is inflated a chunk at a time.
                self._buf += self._inflate.decompress(data, max(need - len(self._buf), _READ))
            except zlib.error as exc:
                raise ArchiveRefused(f"the gzip stream is corrupt: {exc}") from None
            if self._inflate.eof:
                self._eof = True  # trailing bytes after the gzip member are ignored

    def read(self, n: int) -> bytes:
        self._fill(n)
        if len(self._buf) < n:
            raise ArchiveRefused("the archive ends in the middle of a member (truncated)")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def finish(self, limit: int) -> None:
        """Read to the end of the gzip member (a tar's record padding follows its last block);
        a member that never ends is truncated, one that goes on past `limit` is refused."""
        if self._inflate is None:
            return
        seen = 0
        while not self._eof:
            seen += len(self._buf)
            self._buf.clear()
            if seen > limit:
                raise ArchiveRefused(f"more than {limit} bytes follow the end of the archive")
            self._fill(_READ)
        if not self._inflate.eof:
            raise ArchiveRefused("the gzip stream is truncated")

    def skip(self, n: int) -> None:
        while n > 0:
            step = min(n, _READ)
            self.read(step)
            n -= step


def _number(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        value = int.from_bytes(field[1:], "big")
        return -value if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip(b" \0")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ArchiveRefused(f"malformed {what} field in a tar header") from None


def _pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise ArchiveRefused("malformed PAX extended header") from None
        if length <= 0 or pos + length > len(data):
            raise ArchiveRefused("malformed PAX extended header")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


class _Tree:
    """The paths the archive has created so far, to resolve links as the unpacked tree would."""

    def __init__(self) -> None:
        self.links: dict[str, str] = {}  # normalised path -> link target

    def resolve(self, path: str, depth: int = 0) -> str | None:
        """`path` with every symlink component replaced; None if it leaves the root."""
        if depth > _MAX_LINK_DEPTH:
            raise ArchiveRefused(f"too many levels of symbolic links resolving {path!r}")
        done = ""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        for i, part in enumerate(parts):
            if part == "..":
                if not done:
                    return None
                done = posixpath.dirname(done)
                continue
            candidate = f"{done}/{part}" if done else part
            target = self.links.get(candidate)
            if target is not None:
                if target.startswith("/"):
                    return None
                rest = "/".join(parts[i + 1 :])
                joined = posixpath.join(done, target, rest) if rest else posixpath.join(done, target)
                return self.resolve(joined, depth + 1)
            done = candidate
        return done

    def through_link(self, path: str) -> bool:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in self.links:
                return True
        return False


def _check_name(name: str) -> str:
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        raise ArchiveRefused(f"member {name!r}: absolute or malformed path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveRefused(f"member {name!r}: '..' in path")
    return "/".join(parts)


def validate_tar(fileobj: IO[bytes], *, max_bytes: int, max_members: int) -> int:
    """Check every member; the member count. Raises ArchiveRefused or ArchiveTooBig."""
    stream = _Stream(fileobj)
    tree = _Tree()
    members = total = 0
    pax_global: dict[str, str] = {}
    pending: dict[str, str] = {}
    zero_blocks = 0
    while True:
        header = stream.read(BLOCK)
        if header == b"\0" * BLOCK:
            zero_blocks += 1
            if zero_blocks == 2:
                stream.finish(_TRAILER_LIMIT)
                return members
            continue
        zero_blocks = 0
        stored = _number(header[148:156], "checksum")
        computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if stored != computed:
            raise ArchiveRefused("not a tar archive (bad header checksum)")
        kind = header[156:157] or b"\0"
        size = _number(header[124:136], "size")
        if size < 0:
            raise ArchiveRefused("negative member size in a tar header")
        padded = -(-size // BLOCK) * BLOCK
        if kind in (b"x", b"g", b"L", b"K"):
            if size > MAX_EXTENDED_HEADER:
                raise ArchiveRefused(f"an extended header of {size} bytes (at most {MAX_EXTENDED_HEADER})")
            data = stream.read(padded)[:size]
            if kind == b"x":
                pending.update(_pax(data))
            elif kind == b"g":
                pax_global.update(_pax(data))
            else:
                pending["path" if kind == b"L" else "linkpath"] = data.split(b"\0", 1)[0].decode(
                    "utf-8", "surrogateescape")
            continue
        fields = {**pax_global, **pending}
        pending = {}
        name = fields.get("path")
        if name is None:
            raw = header[0:100].split(b"\0", 1)[0]
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            name = (prefix + b"/" + raw if prefix else raw).decode("utf-8", "surrogateescape")
        if "size" in fields:
            try:
                size = int(fields["size"])
            except ValueError:
                raise ArchiveRefused(f"member {name!r}: malformed PAX size") from None
            padded = -(-size // BLOCK) * BLOCK
        members += 1
        if members > max_members:
            raise ArchiveTooBig(f"archive has more than {max_members} members")
        path = _check_name(name)
        if kind in _FORBIDDEN:
            raise ArchiveRefused(f"member {name!r}: {_FORBIDDEN[kind]}s are not accepted")
        if kind not in (b"0", b"\0", b"7", b"5", b"2"):
            raise ArchiveRefused(f"member {name!r}: type {kind!r} not allowed (only files, directories, symlinks)")
        if tree.through_link(path):
            raise ArchiveRefused(f"member {name!r} would be written through a symbolic link")
        if kind == b"2":
            target = fields.get("linkpath") or header[157:257].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if not target or target.startswith("/"):
                raise ArchiveRefused(f"member {name!r}: symlink to an absolute path ({target})")
            tree.links[path] = target
            if tree.resolve(path) is None:
                raise ArchiveRefused(f"member {name!r}: symlink pointing outside the workspace ({target})")
            stream.skip(padded)
            continue
        if kind == b"5":
            stream.skip(padded)
            continue
        total += size
        if total > max_bytes:
            raise ArchiveTooBig(f"archive unpacks to more than {max_bytes} bytes")
        stream.skip(padded)
