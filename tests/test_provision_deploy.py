"""`espcam deploy` onto a virtual board (tests/vboard.py): MicroPython's unix port behind a
pty, driven by mpremote like a board. The deployed app then runs from the board's folder
against a real Mosquitto, so "online" and the frame below are the app's own doing."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from broker import Broker
from observer import Observer
from provision_helpers import ROOT, auth_broker_config, cli
from vboard import VirtualBoard

from provision import ProvisionError, credentials
from provision.deploy import check_mpy_compatible

WIFI = {"ssid": "espcam-test", "password": "test-wifi-pw"}
APP_MODULES = sorted(p.stem for p in (ROOT / "node" / "lib" / "espcam").glob("*.py"))


@pytest.fixture
def vboard(tmp_path):
    b = VirtualBoard(tmp_path / "vb", wifi=WIFI).start()
    yield b
    b.stop()


def copied(out: str) -> list[str]:
    return re.findall(r"^copied +(\S+)", out, re.M)


def test_provision_then_deploy_brings_the_node_online_and_it_sends_a_frame(
    tmp_path, vboard, capsys
):
    passwd = tmp_path / "passwd"
    credentials.add_user(passwd, "watcher", "watcher-pw")
    broker = Broker(tmp_path / "broker", extra=auth_broker_config(passwd))
    cfg_file = tmp_path / "cam-v1.json"
    assert cli("provision", "cam-v1", "--wifi-ssid", WIFI["ssid"],
               "--wifi-password", WIFI["password"], "--broker", broker.url,
               "--passwd-file", str(passwd), "--config-out", str(cfg_file)) == 0  # fmt: skip
    cfg = json.loads(cfg_file.read_text())
    broker.start()
    obs = Observer(broker.host, broker.port, user="watcher", password="watcher-pw")
    try:
        capsys.readouterr()
        assert (
            cli("deploy", "--port", vboard.port, "--config", str(cfg_file), "--umqtt", "local") == 0
        )
        out = capsys.readouterr().out
        assert "cam-v1 is online" in out
        assert cfg["broker"]["password"] not in out and WIFI["password"] not in out

        fs = vboard.fs
        assert json.loads((fs / "config.json").read_text()) == cfg
        for f in ("boot.py", "main.py"):
            assert (fs / f).read_bytes() == (ROOT / "node" / f).read_bytes()
        assert sorted(p.name for p in (fs / "lib" / "espcam").iterdir()) == [
            m + ".mpy" for m in APP_MODULES
        ]
        assert (fs / "lib" / "umqtt" / "simple.py").exists()
        assert not (fs / "safe_mode").exists()

        start = obs.mark()
        ack = obs.command("cam-v1", {"id": "c1", "cmd": "capture"})
        assert ack["ok"] is True
        data, meta, _ = obs.frame("cam-v1", ack["result"]["frame"], start=start)
        assert data == vboard.captures()[-1].read_bytes()
        assert meta["trigger"] == "command"
    finally:
        obs.close()
        broker.stop()


def test_redeploy_copies_only_what_changed(tmp_path, vboard, broker, observer, capsys):
    src = tmp_path / "node"
    shutil.copytree(ROOT / "node", src)
    args = ["deploy", "--port", vboard.port, "--node-src", str(src), "--node-id", "cam-v2",
            "--wifi-ssid", WIFI["ssid"], "--wifi-password", WIFI["password"],
            "--broker", broker.url, "--umqtt", "local"]  # fmt: skip
    assert cli(*args) == 0
    first = copied(capsys.readouterr().out)
    assert {"boot.py", "main.py", "config.json", "lib/espcam/app.mpy"} <= set(first)

    assert cli(*args) == 0
    out = capsys.readouterr().out
    assert copied(out) == [] and "cam-v2 is online" in out

    # A new app version changes one module: only that file travels, and the board runs it.
    init = src / "lib" / "espcam" / "__init__.py"
    init.write_text(re.sub(r'VERSION = "[^"]*"', 'VERSION = "9.9.9-test"', init.read_text()))
    mark = observer.mark()
    assert cli(*args) == 0
    assert copied(capsys.readouterr().out) == ["lib/espcam/__init__.mpy"]
    state = observer.json_on("espcam/cam-v2/state", lambda d: d["app"] == "9.9.9-test", start=mark)
    assert state["node"] == "cam-v2"

    # Back to source files: the .mpy files are removed (a .py would shadow them anyway).
    assert cli(*args, "--no-compile") == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (vboard.fs / "lib" / "espcam").iterdir()) == [
        m + ".py" for m in APP_MODULES
    ]
    assert "removed  lib/espcam/app.mpy" in out and "cam-v2 is online" in out

    # Only the app: the board's config.json stays as it is.
    before = (vboard.fs / "config.json").read_bytes()
    assert cli("deploy", "--port", vboard.port, "--node-src", str(src), "--keep-config",
               "--no-compile", "--umqtt", "local") == 0  # fmt: skip
    assert "cam-v2 is online" in capsys.readouterr().out
    assert (vboard.fs / "config.json").read_bytes() == before


def test_a_node_that_cannot_join_wifi_is_reported_with_its_console(vboard, broker, capsys):
    code = cli("deploy", "--port", vboard.port, "--node-id", "cam-v3", "--wifi-ssid",
               WIFI["ssid"], "--wifi-password", "wrong", "--broker", broker.url,
               "--umqtt", "local", "--wait", "8")  # fmt: skip
    assert code == 1
    out = capsys.readouterr().out
    assert "FAILED: cam-v3 did not come online" in out
    assert "did not join Wi-Fi 'espcam-test'" in out
    assert "| espcam:" in out  # the board's own log lines follow
    assert "wrong" not in out.split("FAILED")[0]


def test_dry_run_prints_the_plan_without_secrets_or_a_board(tmp_path, capsys):
    port = str(tmp_path / "no-such-port")
    assert cli("deploy", "--dry-run", "--port", port, "--node-id", "cam-x", "--wifi-ssid", "home",
               "--wifi-password", "wifi-secret", "--broker", "10.0.0.2:1884",
               "--mqtt-user", "cam-x", "--mqtt-password", "mqtt-secret") == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "lib/espcam/app.mpy" in out and "config.json" in out
    assert "espcam/cam-x/availability = online on 10.0.0.2:1884" in out
    assert "wifi-secret" not in out and "mqtt-secret" not in out and "********" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bad, why",
    [
        (["--node-id", "Cam!", "--wifi-ssid", "h", "--broker", "b"], "node id 'Cam!'"),
        (["--node-id", "cam", "--wifi-ssid", "h", "--broker", "b:0"], "port must be"),
        (["--node-id", "cam", "--broker", "b"], "--wifi-ssid"),
        (["--node-id", "cam", "--wifi-ssid", "h", "--broker", "b", "--mqtt-user", "u"], "both"),
        (["--config", "/nonexistent/cam.json"], "does not exist"),
    ],
)
def test_bad_input_gets_a_clear_error(bad, why, capsys, monkeypatch):
    monkeypatch.delenv("ESPCAM_MQTT_PASSWORD", raising=False)
    assert cli("deploy", "--dry-run", "--port", "/dev/null", *bad) == 1
    err = capsys.readouterr().err
    assert why in err and "Traceback" not in err


def test_mpy_version_mismatch_suggests_the_fix():
    check_mpy_compatible(0xA06, "1.24.1", (6, 3))  # same major: loads
    with pytest.raises(ProvisionError, match="--no-compile"):
        check_mpy_compatible(5, "1.18.0", (6, 3))
    with pytest.raises(ProvisionError, match="--no-compile"):
        check_mpy_compatible(None, "1.12.0", (6, 3))
