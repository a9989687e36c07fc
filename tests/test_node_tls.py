"""The node over TLS (broker.tls, the CA pinned in config.json) against a real Mosquitto with a
TLS listener: a node with the right CA connects and `espcam serve`, connected over TLS as well,
stores its frames; a node pinned to another CA, or expecting another name, is refused, says
why, and keeps trying. The node's own TLS code runs on MicroPython, as on the board."""

from __future__ import annotations

import datetime
import ipaddress
import json
import sys
from pathlib import Path

import pytest
from broker import Broker, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from espcam.sim.node import SimNode
from mpy import lines_ok, run_mpy
from observer import Observer
from polling import wait_listening, wait_until
from test_node_link import SilentListener
from test_node_sim import birth_state, online

sys.path.insert(0, str(Path(__file__).parent))

from e2e_helpers import Serve, assert_stored_identical, backend_online, stored_ids  # noqa: E402

NAME = "broker.test"   # the name in the broker's certificate; the nodes reach it by address


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool, san=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class PKI:
    """A CA, the broker's certificate it signed (DNS:broker.test and IP:127.0.0.1), and
    another CA that signed nothing the broker has."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _pem(_cert("espcam test CA", ca_key, "espcam test CA", ca_key, True))
        key = ec.generate_private_key(ec.SECP256R1())
        server = _cert(NAME, key, "espcam test CA", ca_key, False,
                       [x509.DNSName(NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        other_key = ec.generate_private_key(ec.SECP256R1())
        self.other_ca = _pem(_cert("someone else's CA", other_key, "someone else's CA",
                                   other_key, True))
        self.ca_file = folder / "ca.crt"
        self.ca_file.write_text(self.ca)
        self.other_ca_file = folder / "other-ca.crt"
        self.other_ca_file.write_text(self.other_ca)
        self.cert_file = folder / "server.crt"
        self.cert_file.write_text(_pem(server))
        self.key_file = folder / "server.key"
        self.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
        self.key_file.chmod(0o600)


class TLSBroker(Broker):
    """Mosquitto with its plain listener (for the test's observer) and a TLS listener."""

    def __init__(self, workdir: Path, pki: PKI) -> None:
        self.tls_port = free_port()
        super().__init__(workdir, extra=(f"listener {self.tls_port} 127.0.0.1\n"
                                         f"cafile {pki.ca_file}\ncertfile {pki.cert_file}\n"
                                         f"keyfile {pki.key_file}\n"))

    def start(self) -> TLSBroker:
        super().start()
        wait_listening(self.host, self.tls_port, self.proc,
                       lambda: (self.dir / "mosquitto.stderr").read_text())
        return self

    @property
    def tls_url(self) -> str:
        return f"{self.host}:{self.tls_port}"


@pytest.fixture
def pki(tmp_path):
    return PKI(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path, pki):
    b = TLSBroker(tmp_path / "broker", pki).start()
    yield b
    b.stop()


@pytest.fixture
def watch(tls_broker):
    o = Observer(tls_broker.host, tls_broker.port)   # on the plain listener: sees everything
    yield o
    o.close()


@pytest.fixture
def tls_node(tmp_path, tls_broker):
    """Factory for simulated nodes on the TLS listener, with broker keys merged in."""
    made: list[SimNode] = []

    def make(name: str = "cam-1", heapsize: str | None = None, files=None, **broker):
        b = {"host": tls_broker.host, "port": tls_broker.tls_port, "user": None,
             "password": None, "tls": True, "server_hostname": NAME, **broker}
        n = SimNode(name, tmp_path / "nodes" / name, tls_broker.host, tls_broker.tls_port,
                    config={"broker": b}, heapsize=heapsize)
        for fname, text in (files or {}).items():
            (n.board / fname).write_text(text)
        made.append(n)
        return n.start()

    yield make
    for n in made:
        n.stop()


def tls_check(pki, port, case, name=NAME, ca=None, *extra):
    # .frozen: the unix port's ssl is a frozen module, found there as on a board.
    return lines_ok(run_mpy("tls_check.py", "127.0.0.1", str(port), str(ca or pki.ca_file),
                            name, case, *extra, extra_path=[Path(".frozen")]))


def test_a_node_with_the_right_ca_streams_to_a_backend_over_tls(tmp_path, pki, tls_broker,
                                                                  watch, tls_node):
    class Address:   # `espcam serve --broker` given the TLS listener
        url = tls_broker.tls_url

    serve = Serve(Address, tmp_path / "data", tmp_path / "backend.log",
                  env={"ESPCAM_TLS": "true", "ESPCAM_CA_FILE": str(pki.ca_file)}).start()
    try:
        backend_online(watch)
        # The CA as a file on the board, as `broker.ca: "ca.crt"` names it.
        node = tls_node(ca="ca.crt", files={"ca.crt": pki.ca})
        online(watch)
        ids = [watch.command("cam-1", {"id": f"c{i}", "cmd": "capture"})["result"]["frame"]
               for i in range(3)]
        wait_until(lambda: stored_ids(serve.data_dir, "cam-1") >= set(ids), 60,
                   "the frames stored by the backend")
        assert assert_stored_identical(serve.data_dir, node) == set(ids)
        assert "TLS" not in node.log() and node.boots == 1
    finally:
        serve.stop()


def test_a_node_pinned_to_another_ca_is_refused_says_why_and_keeps_trying(pki, watch,
                                                                          tls_node):
    node = tls_node(ca=pki.other_ca)
    node.wait_for(lambda: node.log().count("retry in") >= 2, 60, "two attempts")
    log = node.log()
    assert f"TLS with {NAME} refused or broken: The certificate is not correctly signed by " \
           "the trusted CA" in log
    assert "retry in 1 s" in log and "retry in 2 s" in log   # back-off, as for any broker
    assert not [m for m in watch.msgs if m.topic == "espcam/cam-1/availability"]
    assert node.status == "running"


def test_a_broker_certificate_for_another_name_is_refused(pki, watch, tls_node):
    node = tls_node(ca=pki.ca, server_hostname="mqtt.elsewhere.test")
    node.wait_log("retry in")
    assert "TLS with mqtt.elsewhere.test refused or broken: The certificate Common Name (CN) " \
           "does not match" in node.log()
    assert not [m for m in watch.msgs if m.topic == "espcam/cam-1/availability"]


def test_a_ca_the_node_cannot_read_stops_it_with_a_config_error(tls_node):
    node = tls_node(ca="missing.crt")
    node.wait_for(lambda: node.status != "running", 30, "the app to stop")
    assert "CONFIG ERROR: broker.ca: no file 'missing.crt' on the board" in node.log()
    node = tls_node("cam-2", ca="-----BEGIN CERTIFICATE-----\nnot base64 at all!\n")
    node.wait_for(lambda: node.status != "running", 30, "the app to stop")
    assert "CONFIG ERROR: broker.ca: certificate 1 has no END line" in node.log()
    assert node.boots == 1


def test_firmware_without_sslcontext_checks_the_certificate_too(pki, tls_broker):
    # MicroPython 1.20's ssl.wrap_socket(cadata=...), the node's fallback.
    assert tls_check(pki, tls_broker.tls_port, "legacy") == ["connected [b'over tls']"]
    refused = tls_check(pki, tls_broker.tls_port, "legacy", NAME, pki.other_ca_file)
    assert refused == [f"failed TLSError TLS with {NAME} refused or broken: The certificate is "
                       "not correctly signed by the trusted CA"]
    assert tls_check(pki, tls_broker.tls_port, "context") == ["connected [b'over tls']"]


def test_a_tls_handshake_that_gets_no_answer_ends_with_the_socket_timeout(pki):
    silent = SilentListener()
    try:
        lines = tls_check(pki, silent.port, "silent")
    finally:
        silent.close()
    assert lines == ["failed TLSError TLS with broker.test refused or broken: OSError(110,)"]


def test_what_tls_costs_the_heap_of_a_board_without_psram(pki, tls_broker, tmp_path):
    # The same node, the same heap, over TLS and not: the free heap its state reports after
    # the connect. mbedtls' own buffers are not on the MicroPython heap (docs/node.md, "TLS").
    figures = {}
    for name, tls in (("cam-plain", False), ("cam-tls", True)):
        b = {"host": tls_broker.host, "port": tls_broker.port, "user": None, "password": None}
        if tls:
            b.update(port=tls_broker.tls_port, tls=True, ca=pki.ca, server_hostname=NAME)
        node = SimNode(name, tmp_path / name, tls_broker.host, b["port"], config={"broker": b},
                       heapsize="150k")
        o = Observer(tls_broker.host, tls_broker.port)
        try:
            node.start()
            figures[name] = birth_state(o, name)["heap_free"]
        finally:
            node.stop()
            o.close()
    lines = tls_check(pki, tls_broker.tls_port, "heap", NAME, None, str(tls_broker.port))
    print("heap_free after connect:", json.dumps(figures), "; client alone:", lines)
    cost = figures["cam-plain"] - figures["cam-tls"]
    assert 0 < cost < 12 * 1024, figures
