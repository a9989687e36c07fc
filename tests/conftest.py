from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from broker import Broker  # noqa: E402
from provision_helpers import WIFI  # noqa: E402


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def observer(broker):
    from observer import Observer

    o = Observer(broker.host, broker.port)
    yield o
    o.close()


@pytest.fixture
def everything(broker):
    """An observer of every topic on the test broker."""
    from observer import Observer

    o = Observer(broker.host, broker.port, "#")
    yield o
    o.close()


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def light_node(broker):
    """Factory for CPython nodes speaking the protocol (tests/lightnode.py), for load and for
    frames a test shapes itself; make_node is the real MicroPython node."""
    from lightnode import LightNode

    made = []

    def make(node_id, **kw):
        n = LightNode(broker.host, broker.port, node_id, **kw).start()
        made.append(n)
        return n

    yield make
    for n in made:
        if n.connected.is_set():
            n.stop()


@pytest.fixture
def make_node(broker, tmp_path):
    """Factory for simulated nodes (the real node/ files on MicroPython) on the test broker."""
    from espcam.sim.node import SimNode

    nodes = []

    def make(name="cam-1", **kw):
        n = SimNode(name, tmp_path / "nodes" / name, broker.host, broker.port, **kw)
        nodes.append(n)
        n.start()
        return n

    yield make
    for n in nodes:
        n.stop()


@pytest.fixture
def vboard(tmp_path):
    """A virtual board behind a pseudo-terminal (tests/vboard.py), for the board tools."""
    from vboard import VirtualBoard

    b = VirtualBoard(tmp_path / "vb", wifi=WIFI).start()
    yield b
    b.stop()


@pytest.fixture
def no_watcher_login_from_outside(tmp_path, monkeypatch):
    """`espcam deploy` takes its watcher's password from the environment and ./.env."""
    from espcam.provision.watchlogin import CLI_PASSWORD_VAR

    monkeypatch.delenv(CLI_PASSWORD_VAR, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def faces_installed() -> None:
    """The analysis tests need the `faces` extra, which ./test installs (the `dev` extra pulls
    it in): missing here it is a broken set-up, so the test fails and says so, never skips."""
    from espcam.backend import faces

    if faces.missing() is not None:
        pytest.fail(f"the faces extra is not installed ({faces.missing()}): run ./scripts/setup.sh")
