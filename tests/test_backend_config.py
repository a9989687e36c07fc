"""Settings precedence (flags > environment > file) and the shipped broker configuration."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from broker import free_port, mosquitto_binary  # noqa: E402
from espcam.backend.config import ConfigError, load  # noqa: E402
from polling import wait_listening  # noqa: E402

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"


def test_flags_win_over_environment_over_file(tmp_path):
    f = tmp_path / "espcam.toml"
    f.write_text('log_level = "DEBUG"\n[mqtt]\nbroker = "file:1"\nprefix = "home/cams"\n'
                 '[storage]\ndata_dir = "/file"\nretention_days = 7\n[limits]\nresend_tries = 9\n')
    s = load(f, env={})
    assert (s.broker, s.prefix, s.data_dir, s.retention_days, s.resend_tries, s.log_level) == (
        "file:1", "home/cams", "/file", 7.0, 9, "DEBUG")
    env = {"ESPCAM_BROKER": "env:2", "ESPCAM_DATA_DIR": "/env", "ESPCAM_RESEND_TRIES": "4"}
    s = load(f, env=env)
    assert (s.broker, s.data_dir, s.resend_tries, s.prefix) == ("env:2", "/env", 4, "home/cams")
    s = load(f, env=env, overrides={"broker": "flag:3", "data_dir": None})
    assert (s.broker, s.host, s.port, s.data_dir) == ("flag:3", "flag", 3, "/env")
    s = load(None, env={"ESPCAM_CONFIG": str(f)})
    assert s.prefix == "home/cams"
    assert load(None, env={}).broker == "localhost:1883"


@pytest.mark.parametrize("text,env,match", [
    ("[mqtt]\nbrokr = 'x'\n", {}, "unknown setting"),
    ("[limits]\nmax_chunks = 'many'\n", {}, "max_chunks must be int"),
    ("", {"ESPCAM_RESEND_AFTER": "soon"}, "ESPCAM_RESEND_AFTER"),
    ("", {"ESPCAM_PREFIX": "a/+/b"}, "invalid topic prefix"),
    ("", {"ESPCAM_BROKER": "host:notaport"}, "not a number"),
    ("not toml =", {}, "espcam.toml"),
])
def test_bad_settings_say_where_they_came_from(tmp_path, text, env, match):
    f = tmp_path / "espcam.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load(f, env=env)


def settings_of(path: Path) -> set[str]:
    lines = (ln.split("#")[0].strip() for ln in path.read_text().splitlines())
    return {re.sub(r"\s+", " ", ln) for ln in lines if ln}


def test_shipped_broker_config_has_every_protocol_setting():
    missing = settings_of(DEPLOY / "protocol.conf") - settings_of(DEPLOY / "mosquitto.conf")
    assert not missing, f"deploy/mosquitto/mosquitto.conf lacks {sorted(missing)}"


def test_shipped_broker_config_starts_mosquitto(tmp_path):
    # The same file with its paths pointed at the test's directory: Mosquitto accepts every
    # line and listens.
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(tmp_path / "passwd"), "u", "p"],
                   check=True)
    (tmp_path / "acl").write_text("user u\ntopic readwrite #\n")
    port = free_port()
    conf = ((DEPLOY / "mosquitto.conf").read_text()
            .replace("/mosquitto/data/", f"{tmp_path}/")
            .replace("/mosquitto/config/passwd", str(tmp_path / "passwd"))
            .replace("/mosquitto/config/espcam.acl", str(tmp_path / "acl"))
            .replace("listener 1883", f"listener {port} 127.0.0.1"))
    # As root Mosquitto would switch to user mosquitto, who cannot read pytest's temp dir.
    (tmp_path / "m.conf").write_text(conf + ("\nuser root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(tmp_path / "m.conf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_listening("127.0.0.1", port, proc, lambda: proc.stdout.read().decode())
    finally:
        proc.terminate()
        proc.wait(5)


ESPCAM = str(Path(sys.executable).parent / "espcam")


def index_with_node(data_dir: Path, node: str) -> Path:
    from espcam.backend.storage import Storage

    s = Storage(data_dir)
    s.update_node(node, seen_at=time.time(), availability="online")
    s.close()
    return data_dir


def listed_nodes(*args: str, env: dict[str, str]) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ESPCAM_")}
    r = subprocess.run([ESPCAM, "nodes", "--json", *args], capture_output=True, text=True,
                       env=clean | env, timeout=60)
    assert r.returncode == 0, r.stderr
    return [n["node"] for n in json.loads(r.stdout)]


def test_cli_precedence_config_flag_over_espcam_config_env_over_files(tmp_path):
    for name in ("a", "b", "c", "d"):
        index_with_node(tmp_path / name, f"node-{name}")
    (tmp_path / "a.toml").write_text(f'[storage]\ndata_dir = "{tmp_path / "a"}"\n')
    (tmp_path / "b.toml").write_text(f'[storage]\ndata_dir = "{tmp_path / "b"}"\n')
    env_b = {"ESPCAM_CONFIG": str(tmp_path / "b.toml")}
    assert listed_nodes(env=env_b) == ["node-b"]
    assert listed_nodes("--config", str(tmp_path / "a.toml"), env=env_b) == ["node-a"]
    env_c = env_b | {"ESPCAM_DATA_DIR": str(tmp_path / "c")}
    assert listed_nodes("--config", str(tmp_path / "a.toml"), env=env_c) == ["node-c"]
    assert listed_nodes("--config", str(tmp_path / "a.toml"), "--data-dir",
                        str(tmp_path / "d"), env=env_c) == ["node-d"]


def test_unknown_espcam_environment_variables_are_warned_about(tmp_path):
    index_with_node(tmp_path / "data", "node-x")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ESPCAM_")}
    r = subprocess.run([ESPCAM, "nodes", "--data-dir", str(tmp_path / "data")],
                       capture_output=True, text=True, timeout=60,
                       env=clean | {"ESPCAM_RETENTON_DAYS": "3", "ESPCAM_NODES": "3",
                                    "ESPCAM_PORT": "1884"})
    assert r.returncode == 0, r.stderr
    assert "ESPCAM_RETENTON_DAYS is not an espcam setting" in r.stderr
    assert "did you mean ESPCAM_RETENTION_DAYS?" in r.stderr
    # Variables of ./run and the other tools are not settings, and not warned about.
    assert "ESPCAM_NODES" not in r.stderr and "ESPCAM_PORT" not in r.stderr
