"""Who watches for a deployed node's birth: `espcam deploy` to a virtual board (tests/vboard.py)
whose node connects to a Mosquitto with the shipped broker's authentication and ACL (users from
a password file, user names as client ids, espcam.acl). deploy watches as espcam-cli, never as
the node, and a watcher the broker would not serve stops it before anything is copied."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from broker import Broker
from espcam.backend.brokerusers import write_env
from espcam.provision import credentials
from espcam.provision.watchlogin import CLI_PASSWORD_VAR, CLI_USER
from observer import Observer
from provision_helpers import (
    cli,
    deploy_args,
    production_broker_config,
)

# deploy reads the watcher's password from the environment and ./.env: neither may come
# from the shell or the checkout the tests run in.
pytestmark = pytest.mark.usefixtures("no_watcher_login_from_outside")


@dataclass
class ShippedBroker:
    broker: Broker
    node_password: str  # of the node cam-p1, as `espcam provision` makes it
    cli_password: str  # of espcam-cli, as `espcam broker-users` writes it to .env


@pytest.fixture
def shipped(tmp_path):
    """Mosquitto with the shipped authentication and ACL: users from a password file holding
    the node cam-p1 and espcam-cli, user names as client ids, espcam.acl."""
    passwd = tmp_path / "broker-config" / "passwd"
    node_password = credentials.add_user(passwd, "cam-p1")
    cli_password = credentials.add_user(passwd, CLI_USER)
    broker = Broker(tmp_path / "broker", extra=production_broker_config(passwd)).start()
    yield ShippedBroker(broker, node_password, cli_password)
    broker.stop()


def test_deploy_sees_its_node_come_online_on_the_shipped_broker(tmp_path, vboard, shipped,
                                                                capsys):  # fmt: skip
    broker = shipped.broker
    # As `espcam broker-users` leaves it in the folder deploy runs in.
    write_env(tmp_path / ".env", {CLI_PASSWORD_VAR: shipped.cli_password})
    code = cli(*deploy_args(vboard.port, "cam-p1", broker.url), "--mqtt-user", "cam-p1",
               f"--mqtt-password={shipped.node_password}")  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"as '{CLI_USER}' ({CLI_PASSWORD_VAR} from .env)" in out
    assert "cam-p1 is online" in out
    assert shipped.cli_password not in out and shipped.node_password not in out
    # The watcher never took the node's place: the broker did not drop a client for another
    # of the same name, and the node is still online for those who may see it.
    assert "already connected" not in broker.log.read_text()
    obs = Observer(broker.host, broker.port, "espcam/cam-p1/availability",
                   user=CLI_USER, password=shipped.cli_password)  # fmt: skip
    try:
        assert obs.topic("espcam/cam-p1/availability").payload == b"online"
    finally:
        obs.close()


@pytest.mark.parametrize(
    "login, said",
    [
        (["--watch-user", CLI_USER, "--watch-password", "Zx9-not-its-password"],
         f"refused the watcher logged in as '{CLI_USER}'"),
        ([], "refused the watcher logged in anonymously"),
        (["--watch-user", "cam-p1", "--watch-password", "any"],
         "the watcher cannot be the node's own broker user 'cam-p1'"),
    ],
    ids=["wrong-password", "no-login", "as-the-node"],
)
def test_a_watcher_the_broker_would_not_serve_stops_deploy_before_the_copy(
    vboard, shipped, capsys, login, said
):
    code = cli(*deploy_args(vboard.port, "cam-p1", shipped.broker.url), "--mqtt-user", "cam-p1",
               f"--mqtt-password={shipped.node_password}", *login)  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert said in err and "--no-wait" in err and "Traceback" not in err
    assert "Zx9-not-its-password" not in err and shipped.node_password not in err
    assert "nothing of the app was copied" in err
    assert not (vboard.fs / "main.py").exists() and not (vboard.fs / "safe_mode").exists()
