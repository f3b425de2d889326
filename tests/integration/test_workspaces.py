"""Workspaces across the socket: upload, hostile archives, --apply, fetch."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from .conftest import REPO, health_watch

SHELL = Path(__file__).parent / "configs" / "shell.yaml"


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info, None


HOSTILE = {
    "absolute": [_file("/tmp/kcd-escape-abs")],
    "dotdot": [_file("../escape.txt")],
    "nested_dotdot": [_file("a/../../escape.txt")],
    "symlink_absolute": [_link("etc", "/etc")],
    "symlink_outside": [_link("up", "../../..")],
    "symlink_then_write_through": [_link("d", "."), _file("d/../../x")],
    "hardlink": [_file("a.txt"), _link("b.txt", "a.txt", tarfile.LNKTYPE)],
    "device": [_device("null")],
    "fifo": [(lambda i: (setattr(i, "type", tarfile.FIFOTYPE) or i))(tarfile.TarInfo("p")), None],
    # each link stays inside on its own; through the first, the second leaves the root
    "chained_symlinks": [_link("sub/s1", ".."), _link("sub/s1/s2", "../..")],
    "symlink_chain_then_dir": [_link("a", "b"), _link("b", "a/../..")],
    "write_through_inner_link": [_link("inner", "sub"), _file("inner/x")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_uploads_are_refused(kcd, case, kcd_root):
    members = HOSTILE[case]
    if case == "fifo":
        members = [(members[0], None)]
    with kcd.http() as c:
        r = c.post("/v1/workspaces", content=_tar(members), headers={"content-type": "application/gzip"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "unsafe_archive"
        assert c.get("/v1/health").json()["state"] == "ok"
    assert not Path("/tmp/kcd-escape-abs").exists()
    assert not (kcd_root / "escape.txt").exists()
    assert not list((kcd.state_dir / "uploads").glob("u_*"))  # refused uploads are not kept


def test_garbage_and_oversize_uploads(make_kcd, kcd_root):
    (kcd_root / "kcd.yaml").write_text("max_upload_bytes: 4096\nmax_workspace_bytes: 100000\n")
    daemon = make_kcd("--executor", "in-process", "--config", str(kcd_root / "kcd.yaml"))
    with daemon.http() as c:
        assert c.post("/v1/workspaces", content=b"not a tar at all").status_code == 400
        r = c.post("/v1/runs", json={"config_text": "x", "task": "t", "workspace_upload": "u_nothere"})
        assert r.status_code == 400
        import os

        noise = os.urandom(8000)  # incompressible: over the upload limit
        r = c.post("/v1/workspaces", content=_tar([_file("big.bin", noise)]))
        assert r.status_code == 413
        bomb = _tar([_file("zeros.bin", b"\0" * 200_000)])  # small upload, too big unpacked
        assert len(bomb) < 4096
        r = c.post("/v1/workspaces", content=bomb)
        assert r.status_code == 400 and "more than" in r.json()["error"]["message"]
        assert c.get("/v1/health").json()["state"] == "ok"


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _pax_bomb(declared: int, zeros: int) -> bytes:
    """A gzip'd tar whose first header is a PAX extended header declaring `declared` bytes,
    followed by `zeros` zero bytes: tiny compressed, enormous to a reader that believes it."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = declared
    block = header.tobuf(format=tarfile.GNU_FORMAT)  # base-256 sizes: 8 GiB fits
    z = __import__("zlib").compressobj(9, __import__("zlib").DEFLATED, 31)
    out = [z.compress(block)]
    chunk = b"\0" * (1 << 20)
    for _ in range(zeros >> 20):
        out.append(z.compress(chunk))
    out.append(z.flush())
    return b"".join(out)


def _plain_pax_bomb(size: int) -> bytes:
    """An uncompressed tar whose PAX extended header really is `size` bytes of records."""
    body = bytearray()
    while len(body) < size - 64:
        line = b" comment=" + b"x" * 4000 + b"\n"
        n = len(line) + len(str(len(line) + 5))
        body += str(n).encode() + line
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = len(body)
    pad = (-len(body)) % 512
    member = tarfile.TarInfo("a.txt").tobuf(format=tarfile.USTAR_FORMAT)
    return header.tobuf(format=tarfile.GNU_FORMAT) + bytes(body) + b"\0" * pad + member + b"\0" * 1024


@pytest.mark.parametrize("kind", ["gzip-8GiB-declared", "plain-8MiB"])
def test_a_pax_bomb_is_refused_at_once_in_bounded_memory(kcd, kind):
    if kind == "plain-8MiB":  # an 8 MiB upload that is one 8 MiB extended header
        bomb = _plain_pax_bomb(8 << 20)
        assert len(bomb) >= 8 << 20
    else:  # ~1 MiB upload, an 8 GiB header claimed
        bomb = _pax_bomb(declared=8 << 30, zeros=1 << 30)
    before = _peak_rss_kib(kcd.proc.pid)
    with health_watch(kcd) as latencies, kcd.http(timeout=60) as c:
        started = time.monotonic()
        r = c.post("/v1/workspaces", content=bomb)
        elapsed = time.monotonic() - started
    assert r.status_code == 400 and "extended header" in r.json()["error"]["message"], r.text
    assert elapsed < 10, elapsed
    assert latencies and max(latencies) < 1.0, max(latencies)
    assert _peak_rss_kib(kcd.proc.pid) - before < 64 * 1024


def test_truncated_and_corrupt_gzip_are_400(kcd):
    good = _tar([_file("a.txt", b"hello" * 1000), _file("b.txt", b"world" * 1000)])
    corrupt = good[:40] + bytes(b ^ 0xFF for b in good[40:80]) + good[80:]
    with kcd.http() as c:
        for body in (good[: len(good) // 2], good[:-12], corrupt):
            r = c.post("/v1/workspaces", content=body)
            assert r.status_code == 400, (len(body), r.status_code, r.text)
            assert r.json()["error"]["code"] == "unsafe_archive"
        assert c.post("/v1/workspaces", content=good).status_code == 201


def _workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "proj"
    (ws / "src").mkdir(parents=True)
    (ws / "README.md").write_text("old title\n")
    (ws / "gone.txt").write_text("delete me\n")
    (ws / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (ws / ".gitignore").write_text("build/\n*.log\n")
    (ws / "build").mkdir()
    (ws / "build" / "out.o").write_text("binary")
    (ws / "debug.log").write_text("noise")
    (ws / ".git").mkdir()
    (ws / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return ws


def test_upload_respects_gitignore_and_git(kcd, tmp_path):
    ws = _workspace(tmp_path)
    proc = kcd.kcctl("run", str(SHELL), "--task", "ls -a; ls build || true", "--workspace", str(ws), "--json",
                     check=True)
    end = json.loads(proc.stdout.splitlines()[-1])
    run_ws = Path(end["data"]["run_dir"]) / "workspace"
    assert (run_ws / "README.md").read_text() == "old title\n"
    assert (run_ws / "src" / "main.c").exists() and (run_ws / ".gitignore").exists()
    assert not (run_ws / "build").exists() and not (run_ws / "debug.log").exists()
    assert not (run_ws / ".git").exists()
    proc = kcd.kcctl("run", str(SHELL), "--task", "true", "--workspace", str(ws), "--include-git", "--json",
                     check=True)
    end = json.loads(proc.stdout.splitlines()[-1])
    assert (Path(end["data"]["run_dir"]) / "workspace" / ".git" / "HEAD").exists()


def test_apply_writes_the_agents_changes_back(kcd, tmp_path):
    ws = _workspace(tmp_path)
    cmd = "sed -i 's/old/new/' README.md && echo added > src/new.c && rm gone.txt"
    proc = kcd.kcctl("run", str(SHELL), "--task", cmd, "--workspace", str(ws), "--apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (ws / "README.md").read_text() == "new title\n"
    assert (ws / "src" / "new.c").read_text() == "added\n"
    assert not (ws / "gone.txt").exists()
    assert (ws / "build" / "out.o").read_text() == "binary"  # ignored files untouched
    assert "applied: modified README.md" in proc.stderr
    diff = (Path(_run_dir(proc.stdout)) / "workspace.diff").read_text()
    assert "-old title" in diff and "+new title" in diff and "src/new.c" in diff


def _run_dir(stdout: str) -> str:
    return next(line.split("run dir:", 1)[1].strip() for line in stdout.splitlines() if "run dir:" in line)


def test_apply_is_refused_when_the_directory_changed_meanwhile(kcd, tmp_path):
    ws = _workspace(tmp_path)

    def meddle():
        time.sleep(1.0)
        (ws / "README.md").write_text("edited by the user meanwhile\n")

    t = threading.Thread(target=meddle)
    t.start()
    proc = kcd.kcctl("run", str(SHELL), "--task", "sleep 3 && echo x > README.md", "--workspace", str(ws),
                     "--apply")
    t.join()
    assert proc.returncode == 1
    assert "changed since it was uploaded" in proc.stderr and "README.md" in proc.stderr
    assert (ws / "README.md").read_text() == "edited by the user meanwhile\n"


def test_runs_fetch_writes_the_final_workspace(kcd, tmp_path):
    ws = _workspace(tmp_path)
    proc = kcd.kcctl("run", str(SHELL), "--task", "echo made > made.txt", "--workspace", str(ws), "--json",
                     check=True)
    run_id = json.loads(proc.stdout.splitlines()[-1])["run_id"]
    out = tmp_path / "fetched"
    res = kcd.kcctl("runs", "fetch", run_id, "--out", str(out), check=True)
    assert "files" in res.stdout
    assert (out / "made.txt").read_text() == "made\n"
    assert (out / "src" / "main.c").exists()
    again = kcd.kcctl("runs", "fetch", run_id, "--out", str(out))
    assert again.returncode == 2  # not empty: refused


def test_kcctl_apply_needs_workspace(kcd):
    res = kcd.kcctl("run", str(SHELL), "--task", "true", "--apply")
    assert res.returncode == 2


def test_pack_module_does_not_import_ray():
    code = "import sys, kcd.workspaces.archive; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
