from pathlib import Path

import pytest

from kcd.api.paths import SocketPathError, parse_host, resolve_socket
from kcd.config.daemon import DaemonConfigError, load_daemon_config

REPO = Path(__file__).resolve().parents[3]


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


# -- circuit breaker settings --------------------------------------------------

BREAKER_DEFAULTS = {
    "threshold": 3,
    "min_calls": None,
    "failure_rate": 0.5,
    "window_s": 60.0,
    "window_size": 10,
    "cooldown_s": 5.0,
    "cap_s": 300.0,
    "jitter": 0.2,
    "half_open_permits": 1,
    "half_open_max_wait_s": 600.0,
    "retry_after_clamp_s": 3600.0,
    "enabled": True,
}


def _load(tmp_path, text):
    f = tmp_path / "kcd.yaml"
    f.write_text(text)
    return load_daemon_config(f, {}, {})


def test_breaker_defaults_and_field_names():
    import msgspec

    from kcd.config.daemon import DaemonConfig

    cfg = load_daemon_config(REPO / "configs" / "kcd.yaml", {}, {})
    # The dispatcher builds its BreakerConfig from these names (msgspec.structs.asdict).
    assert msgspec.structs.asdict(cfg.breaker) == BREAKER_DEFAULTS
    assert cfg.breaker_overrides == {}
    assert msgspec.structs.asdict(DaemonConfig().breaker) == BREAKER_DEFAULTS


def test_breaker_settings_from_yaml_and_overrides_layer_over_them(tmp_path):
    import msgspec

    cfg = _load(tmp_path, (
        "breaker:\n  threshold: 5\n  cooldown_s: 60\n  cap_s: 600\n  enabled: false\n"
        "breaker_overrides:\n"
        "  gpt-4o-mini:\n    jitter: 0\n"
        "  openrouter/x-ai/grok-4-fast:\n    threshold: 2\n    half_open_permits: 3\n"
    ))
    assert (cfg.breaker.threshold, cfg.breaker.cooldown_s, cfg.breaker.cap_s, cfg.breaker.enabled) == (
        5, 60.0, 600.0, False)
    assert set(cfg.breaker_overrides) == {"openai/gpt-4o-mini", "openrouter/x-ai/grok-4-fast"}
    mini = msgspec.structs.asdict(cfg.breaker_overrides["openai/gpt-4o-mini"])
    assert mini == {**BREAKER_DEFAULTS, "threshold": 5, "cooldown_s": 60.0, "cap_s": 600.0, "enabled": False,
                    "jitter": 0.0}
    grok = cfg.breaker_for("openrouter/x-ai/grok-4-fast")
    assert (grok.threshold, grok.half_open_permits, grok.cooldown_s) == (2, 3, 60.0)
    assert cfg.breaker_for("gpt-4o-mini") is cfg.breaker_overrides["openai/gpt-4o-mini"]
    assert cfg.breaker_for("mock/dev") is cfg.breaker


def test_empty_breaker_blocks_mean_defaults(tmp_path):
    import msgspec

    cfg = _load(tmp_path, "breaker:\nbreaker_overrides:\n")
    assert msgspec.structs.asdict(cfg.breaker) == BREAKER_DEFAULTS and cfg.breaker_overrides == {}
    cfg = _load(tmp_path, "breaker:\n  threshold:\nbreaker_overrides:\n  mock/dev:\n")
    assert cfg.breaker.threshold == 3 and cfg.breaker_for("mock/dev") == cfg.breaker


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("breaker:\n  threshold: 0\n", "$.breaker.threshold", ">= 1"),
        ("breaker:\n  half_open_permits: 4\n", "$.breaker.half_open_permits", "<= 3"),
        ("breaker:\n  half_open_permits: 0\n", "$.breaker.half_open_permits", ">= 1"),
        ("breaker:\n  jitter: 1.5\n", "$.breaker.jitter", "<= 1.0"),
        ("breaker:\n  jitter: -0.1\n", "$.breaker.jitter", ">= 0"),
        ("breaker:\n  window_s: 0\n", "$.breaker.window_s", "> 0"),
        ("breaker:\n  retry_after_clamp_s: -1\n", "$.breaker.retry_after_clamp_s", "> 0"),
        ("breaker:\n  cooldown_s: 7200\n", "$.breaker", "shorter than cooldown_s"),
        ("breaker:\n  colour: red\n", "$.breaker", "unknown field `colour`"),
        ("breaker: 3\n", "$.breaker", "Expected `object`"),
        ("breaker_overrides: [1]\n", "$.breaker_overrides", "Expected `object`, got `array`"),
        ("breaker_overrides:\n  mock/dev: 3\n", '$.breaker_overrides["mock/dev"]', "Expected `object`"),
        ("breaker_overrides:\n  mock/dev:\n    jitter: 2\n", '$.breaker_overrides["mock/dev"].jitter', "<= 1.0"),
        ("breaker_overrides:\n  x-ai/grok:\n    threshold: 2\n", '$.breaker_overrides["x-ai/grok"]',
         "unknown provider prefix"),
        ("breaker_overrides:\n  gpt-4o:\n    threshold: 2\n  openai/gpt-4o: {}\n",
         '$.breaker_overrides["openai/gpt-4o"]', "already has an override"),
        # layered: the override's cooldown is checked against the base cap
        ("breaker:\n  cap_s: 100\n  cooldown_s: 50\nbreaker_overrides:\n  mock/dev:\n    cooldown_s: 200\n",
         '$.breaker_overrides["mock/dev"]', "cap_s (100) is shorter than cooldown_s (200)"),
    ],
)
def test_bad_breaker_settings_name_the_file_and_key(tmp_path, text, where, what):
    with pytest.raises(DaemonConfigError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "kcd.yaml") + ": ")
    assert f"at `{where}`" in message
    assert what in message


def test_sandbox_settings_and_the_old_isolation_names(tmp_path):
    default = load_daemon_config(None, {}, {})
    assert default.sandbox.isolation == "auto" and not default.sandbox.accept_weaker
    for old, new in (("none", "process"), ("unshare", "namespaces"), ("bwrap", "bwrap")):
        path = tmp_path / "kcd.yaml"
        path.write_text(f"tool_isolation: {old}\n")
        assert load_daemon_config(path, {}, {}).sandbox.isolation == new
    path.write_text("sandbox:\n  isolation: chroot\n")
    with pytest.raises(DaemonConfigError, match="sandbox.isolation"):
        load_daemon_config(path, {}, {})
    path.write_text("sandbox:\n  max_processes: 2\n")
    with pytest.raises(DaemonConfigError, match="max_processes"):
        load_daemon_config(path, {}, {})


@pytest.mark.parametrize(("text", "error"), [
    ("viewer: {host: 0.0.0.0}\n", r"viewer.host '0.0.0.0' is not a loopback address.*\$\.viewer"),
    ("viewer: {host: example.org}\n", r"not a loopback address"),
    ("viewer: {port: 70000}\n", r"\$\.viewer\.port"),
    ("viewer: {login_ttl_s: 0}\n", r"\$\.viewer\.login_ttl_s"),
    ("viewer: {history_points: 1}\n", r"\$\.viewer\.history_points"),
    ("viewer: {colour: red}\n", r"colour"),
])
def test_viewer_settings_are_checked(tmp_path, text, error):
    f = tmp_path / "kcd.yaml"
    f.write_text(text)
    with pytest.raises(DaemonConfigError, match=error):
        load_daemon_config(f, {}, {})


def test_viewer_may_leave_loopback_only_when_allowed(tmp_path):
    f = tmp_path / "kcd.yaml"
    f.write_text("viewer: {host: 0.0.0.0, allow_remote: true, port: 8088}\n")
    viewer = load_daemon_config(f, {}, {}).viewer
    assert (viewer.host, viewer.port, viewer.allow_remote) == ("0.0.0.0", 8088, True)
    f.write_text("viewer: {host: '::1'}\n")
    assert load_daemon_config(f, {}, {}).viewer.host == "::1"
