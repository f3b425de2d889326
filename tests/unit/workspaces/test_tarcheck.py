"""The streaming tar validator: bounded headers, links resolved through earlier links, truncation."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from kcd.workspaces.tarcheck import MAX_EXTENDED_HEADER, ArchiveRefused, ArchiveTooBig, validate_tar


def build(members, fmt=tarfile.PAX_FORMAT, compress=True) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if compress else "w", format=fmt) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                tar.addfile(info)
    buf.seek(0)
    return buf


def check(buf, **kw) -> int:
    return validate_tar(buf, max_bytes=kw.get("max_bytes", 1 << 20), max_members=kw.get("max_members", 100))


def test_a_normal_archive_passes_in_every_format() -> None:
    members = [("src", "dir", None), ("src/main.c", "file", b"int main;\n"), ("link", "sym", "src/main.c"),
               ("d/" + "x" * 150 + ".txt", "file", b"long name")]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        for compress in (True, False):
            assert check(build(members, fmt, compress)) == 4


@pytest.mark.parametrize("links", [
    [("sub/s1", ".."), ("sub/s1/s2", "../..")],
    [("a", "."), ("a/b", "a/a/a/..")],
    [("x", "y"), ("y", "x/../..")],
    [("up", "../x")],
    [("abs", "/etc")],
])
def test_links_that_leave_the_root_through_earlier_links_are_refused(links) -> None:
    with pytest.raises(ArchiveRefused, match="outside|absolute|levels|through a symbolic link"):
        check(build([(name, "sym", target) for name, target in links]))


def test_writing_through_a_link_is_refused() -> None:
    with pytest.raises(ArchiveRefused, match="through a symbolic link"):
        check(build([("inner", "sym", "sub"), ("inner/x", "file", b"x")]))


def test_oversized_extended_headers_are_refused_before_reading() -> None:
    long_name = "n" * (MAX_EXTENDED_HEADER + 10)
    with pytest.raises(ArchiveRefused, match="extended header"):
        check(build([(long_name, "file", b"x")], tarfile.GNU_FORMAT))
    with pytest.raises(ArchiveRefused, match="extended header"):
        check(build([(long_name, "file", b"x")], tarfile.PAX_FORMAT))


def test_caps_on_members_and_size() -> None:
    with pytest.raises(ArchiveTooBig, match="members"):
        check(build([(f"f{i}", "file", b"") for i in range(20)]), max_members=10)
    with pytest.raises(ArchiveTooBig, match="bytes"):
        check(build([("big", "file", b"\0" * 5000)]), max_bytes=4096)


def test_truncated_corrupt_and_garbage_input() -> None:
    good = build([("a", "file", b"hello" * 2000)]).getvalue()
    for bad in (good[:-8], good[: len(good) // 2], good[:30] + b"\xff" * 20 + good[50:], b"garbage" * 100,
                gzip.compress(b"not a tar" * 100)):
        with pytest.raises(ArchiveRefused):
            check(io.BytesIO(bad))
