"""`espcam provision` and the password-file users it makes, checked by a real Mosquitto."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import uuid

import paho.mqtt.client as mqtt
import pytest
from broker import Broker
from espcam.backend.session import make_client  # noqa: E402
from espcam.provision import ProvisionError, credentials
from provision_helpers import (
    CLI_CODE,
    ROOT,
    auth_broker_config,
    cli,
    cli_process,
    installed_command,
    installed_copy,
)


def can_connect(broker: Broker, user: str, password: str) -> bool:
    c = make_client(f"t-{uuid.uuid4().hex[:8]}", username=user, password=password)
    try:
        return not c.connect(broker.host, broker.port) and _connack_ok(c)
    finally:
        c.disconnect()


def _connack_ok(c: mqtt.Client) -> bool:
    result: list[bool] = []
    c.on_connect = lambda c, u, f, rc, p: result.append(not rc.is_failure)
    for _ in range(100):
        c.loop(0.1)
        if result:
            return result[0]
    raise AssertionError("no CONNACK")


@pytest.fixture
def auth_broker(tmp_path):
    passwd = tmp_path / "passwd"
    credentials.add_user(passwd, "admin", "admin-pw")  # the broker refuses an empty file
    b = Broker(tmp_path / "broker", extra=auth_broker_config(passwd))
    yield b, passwd
    b.stop()


def test_mosquitto_accepts_the_user_and_only_with_its_password(auth_broker):
    broker, passwd = auth_broker
    pw = credentials.add_user(passwd, "cam-1")
    broker.start()
    assert can_connect(broker, "cam-1", pw)
    assert not can_connect(broker, "cam-1", pw + "x")
    assert stat.S_IMODE(passwd.stat().st_mode) == credentials.FILE_MODE


def test_existing_users_are_kept_and_not_silently_rotated(tmp_path):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "old", "old-pw"], check=True)
    pw = credentials.add_user(passwd, "cam-1")
    with pytest.raises(ProvisionError, match="already exists"):
        credentials.add_user(passwd, "cam-1")
    users = credentials.read_users(passwd)
    assert set(users) == {"old", "cam-1"}
    assert credentials.check_password(users["old"], "old-pw")  # mosquitto_passwd's own line
    assert credentials.check_password(users["cam-1"], pw)
    new = credentials.add_user(passwd, "cam-1", replace=True)
    assert new != pw and credentials.check_password(credentials.read_users(passwd)["cam-1"], new)
    with pytest.raises(ProvisionError, match="broker user"):
        credentials.add_user(passwd, "bad user:name")


def test_provision_writes_user_and_config_and_hides_the_password(tmp_path, capsys, auth_broker):
    broker, passwd = auth_broker
    out = tmp_path / "nodes" / "cam-kitchen.json"
    argv = [
        "provision",
        "cam-kitchen",
        "--wifi-ssid",
        "home",
        "--wifi-password",
        "wifi-secret",
        "--broker",
        "192.168.1.10",
        "--passwd-file",
        str(passwd),
        "--config-out",
        str(out),
    ]
    assert cli(*argv) == 0
    said = capsys.readouterr().out
    cfg = json.loads(out.read_text())
    password = cfg["broker"]["password"]
    assert cfg["node_id"] == "cam-kitchen" and cfg["broker"]["user"] == "cam-kitchen"
    assert cfg["broker"]["host"] == "192.168.1.10" and cfg["broker"]["port"] == 1883
    assert str(passwd) in said and str(out) in said
    assert password not in said and "wifi-secret" not in said
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    broker.start()
    assert can_connect(broker, "cam-kitchen", password)

    # Again without --rotate: refused, nothing changed.
    before = passwd.read_text()
    assert cli(*argv) == 1
    assert "--rotate" in capsys.readouterr().err
    assert passwd.read_text() == before
    # With --rotate and --show-password: a new password, printed this time.
    assert cli(*argv, "--rotate", "--show-password") == 0
    new = json.loads(out.read_text())["broker"]["password"]
    assert new != password and new in capsys.readouterr().out


def test_provision_checks_its_input_before_touching_the_password_file(tmp_path, capsys):
    passwd = tmp_path / "passwd"
    for bad, why in [
        (["Cam 1", "--wifi-ssid", "h", "--broker", "b"], "node id"),
        (["cam-1", "--broker", "b"], "--wifi-ssid"),
        (["cam-1", "--wifi-ssid", "h", "--broker", "b:99999"], "port"),
        (["cam-1", "--wifi-ssid", "h"], "--broker"),
    ]:
        assert (
            cli(
                "provision",
                *bad,
                "--passwd-file",
                str(passwd),
                "--config-out",
                str(tmp_path / "c.json"),
            )
            == 1
        )
        assert why in capsys.readouterr().err
    assert not passwd.exists()


def checkout(folder, with_broker_setup: bool):
    """A copy of the provision package in a checkout-like folder (pyproject.toml beside it),
    with or without the broker setup (deploy/mosquitto/mosquitto.conf) the default files
    belong next to."""
    shutil.copytree(ROOT / "provision", folder / "provision",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", folder / "pyproject.toml")
    # `espcam.provision` is this folder's provision/, as the checkout's is through pyproject.
    (folder / "espcam").mkdir()
    (folder / "espcam" / "__init__.py").write_text(
        "import os\n__path__.append(os.path.dirname(os.path.dirname(__file__)))\n")
    if with_broker_setup:
        (folder / "deploy" / "mosquitto").mkdir(parents=True)
        (folder / "deploy" / "mosquitto" / "mosquitto.conf").write_text("# the broker's\n")
    return folder


PROVISION = ["provision", "cam-d", "--wifi-ssid", "home", "--broker", "10.0.0.2"]


def test_default_files_go_to_the_checkout_not_the_current_directory(tmp_path):
    repo = checkout(tmp_path / "repo", with_broker_setup=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = cli_process(*PROVISION, root=repo, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert "cam-d" in credentials.read_users(repo / "deploy" / "mosquitto" / "passwd")
    cfg = json.loads((repo / "deploy" / "nodes" / "cam-d.json").read_text())
    assert cfg["broker"]["user"] == "cam-d"
    assert list(elsewhere.iterdir()) == []

    # A checkout without the broker setup: no place for the defaults, so refused.
    bare = checkout(tmp_path / "bare", with_broker_setup=False)
    proc = cli_process(*PROVISION, root=bare, cwd=elsewhere)
    assert proc.returncode == 1
    assert "mosquitto.conf is missing" in proc.stderr and "--passwd-file" in proc.stderr
    assert not (bare / "deploy").exists() and list(elsewhere.iterdir()) == []


def test_installed_without_a_checkout_the_files_must_be_named(tmp_path):
    site = installed_copy(tmp_path / "site-packages")
    cmd, env = installed_command(site, CLI_CODE, *PROVISION)
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "installed without its checkout" in proc.stderr
    assert "--passwd-file" in proc.stderr and "--config-out" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site-packages"]
    assert not list(site.rglob("passwd")) and not list(site.rglob("cam-d.json"))

    passwd, out = tmp_path / "broker" / "passwd", tmp_path / "cam-d.json"
    (tmp_path / "broker").mkdir()
    (tmp_path / "broker" / "mosquitto.conf").write_text("password_file passwd\n")
    cmd, env = installed_command(site, CLI_CODE, *PROVISION, "--passwd-file", str(passwd),
                                 "--config-out", str(out))  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "cam-d" in credentials.read_users(passwd)
    assert json.loads(out.read_text())["node_id"] == "cam-d"


def test_a_new_password_file_is_made_only_next_to_a_broker_config(tmp_path, capsys):
    passwd = tmp_path / "typo" / "passwd"
    argv = ["provision", "cam-n", "--wifi-ssid", "home", "--broker", "10.0.0.2",
            "--passwd-file", str(passwd), "--config-out", str(tmp_path / "cam-n.json")]  # fmt: skip
    assert cli(*argv) == 1
    assert "there is no mosquitto.conf next to it" in capsys.readouterr().err
    assert not passwd.parent.exists() and not (tmp_path / "cam-n.json").exists()
    passwd.parent.mkdir()
    (passwd.parent / "mosquitto.conf").write_text("password_file passwd\n")
    assert cli(*argv) == 0
    assert "cam-n" in credentials.read_users(passwd)


def test_settings_the_shipped_acl_refuses_are_warned_about(tmp_path, capsys):
    passwd = tmp_path / "passwd"
    credentials.add_user(passwd, "admin", "admin-pw")
    base = ["--wifi-ssid", "home", "--broker", "10.0.0.2", "--passwd-file", str(passwd)]
    assert cli("provision", "cam-a", *base, "--config-out", str(tmp_path / "a.json")) == 0
    assert "warning" not in capsys.readouterr().out
    assert cli("provision", "cam-b", *base, "--config-out", str(tmp_path / "b.json"),
               "--mqtt-user", "garden", "--prefix", "home/cams") == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "warning: broker user 'garden' is not the node id 'cam-b'" in out
    assert "warning: prefix 'home/cams' is not 'espcam'" in out
    assert "espcam.acl" in out
    # Still done: a broker with its own ACL may want exactly this.
    assert "garden" in credentials.read_users(passwd)
