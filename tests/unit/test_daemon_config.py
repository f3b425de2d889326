from pathlib import Path

import pytest

from kcd.api.paths import SocketPathError, parse_host, resolve_socket
from kcd.config.daemon import DaemonConfigError, load_daemon_config

REPO = Path(__file__).resolve().parents[2]


def test_shipped_daemon_config_loads():
    cfg = load_daemon_config(REPO / "configs" / "kcd.yaml", {}, {})
    assert cfg.mode == "system" and cfg.executor == "ray"
    assert cfg.socket == Path("/run/kylecode/kcd.sock")
    assert cfg.runs_root == Path("/var/lib/kylecode/runs")


def test_flags_beat_env_beat_file(tmp_path):
    f = tmp_path / "kcd.yaml"
    f.write_text("executor: ray\nheartbeat_s: 5\n")
    cfg = load_daemon_config(f, {"RAY_SCE_LOCAL_MODE": "1"}, {"heartbeat_s": 2.0})
    assert cfg.executor == "in-process" and cfg.heartbeat_s == 2.0


def test_bad_daemon_config_names_the_file_and_key(tmp_path):
    f = tmp_path / "kcd.yaml"
    f.write_text("executor: docker\n")
    with pytest.raises(DaemonConfigError, match=r"kcd.yaml.*\$\.executor"):
        load_daemon_config(f, {}, {})
    f.write_text("bogus: 1\n")
    with pytest.raises(DaemonConfigError, match="bogus"):
        load_daemon_config(f, {}, {})


def test_socket_resolution_order(tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    assert resolve_socket("/x/kcd.sock", env) == (Path("/x/kcd.sock"), "explicit")
    assert resolve_socket(None, {**env, "KYLECODE_HOST": "unix:///y/kcd.sock"}) == (Path("/y/kcd.sock"), "env")
    path, how = resolve_socket(None, env)
    assert how in ("user", "system")
    (tmp_path / "kylecode").mkdir()
    (tmp_path / "kylecode" / "kcd.sock").touch()
    assert resolve_socket(None, env) == (tmp_path / "kylecode" / "kcd.sock", "user")


def test_bad_hosts_and_long_paths():
    with pytest.raises(SocketPathError):
        parse_host("tcp://1.2.3.4:5")
    with pytest.raises(SocketPathError, match="108|107"):
        resolve_socket("/tmp/" + "x" * 200)
