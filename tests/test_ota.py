"""Updates over MQTT (docs/deploy.md, "Over the air"; docs/protocol.md, "Updates"): the real
node app on MicroPython, the real backend and `espcam ota`, on a real Mosquitto. Each test
drives one update to its outcome and checks what the node, the backend's record and the broker
show."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from espcam.backend.config import Settings
from espcam.backend.otapack import NodeRecord
from espcam.backend.subscriber import Backend
from espcam.sim.chip import micropython_binary, micropython_path
from espcam.sim.node import NODE_SRC
from polling import wait_until

KEY = "11" * 32
OTHER_KEY = "22" * 32


def new_app(dest: Path, version: str, crash: str | None = None, head: str = "",
            module: str = "app.py") -> Path:
    """A copy of the node app with another VERSION (and, with `crash`, an app.py that raises
    that at import; `head`, code put at the top of `module`)."""
    shutil.copytree(NODE_SRC, dest)
    init = dest / "lib" / "espcam" / "__init__.py"
    init.write_text(init.read_text().replace('VERSION = "0.1.0"', f'VERSION = "{version}"'))
    assert version in init.read_text()
    if crash:
        app = dest / "lib" / "espcam" / "app.py"
        app.write_text(f"raise RuntimeError({crash!r})\n" + app.read_text())
    if head:
        f = dest / "lib" / "espcam" / module
        f.write_text(head + f.read_text())
    return dest


def compiled_app(dest: Path) -> Path:
    """The node app as `espcam deploy` puts it on a board: lib/espcam compiled to .mpy."""
    from espcam.provision.mpy import compile_package, mpy_cross_binary

    (dest / "lib" / "espcam").mkdir(parents=True)
    for f in ("boot.py", "main.py"):
        shutil.copy(NODE_SRC / f, dest / f)
    compile_package(NODE_SRC / "lib" / "espcam", dest / "lib" / "espcam", mpy_cross_binary(),
                    "lib/espcam")
    return dest


class Ota:
    def __init__(self, broker, tmp: Path, make_node, observer) -> None:
        self.broker, self.tmp, self.make, self.obs = broker, tmp, make_node, observer
        self.data = tmp / "data"
        self.keys = tmp / "keys"
        self.keys.mkdir()
        self.backend = Backend(Settings(broker=broker.url, data_dir=str(self.data))).start()
        assert self.backend.connected.wait(10)

    def node(self, name: str = "cam-1", key: str = KEY, sim: dict | None = None, **config):
        (self.keys / f"{name}.json").write_text(json.dumps({"node_id": name, "ota_key": key}))
        n = self.make(name, config={"ota_key": key, **config}, **(sim or {}))
        self.obs.json_on(f"espcam/{name}/state", lambda d: "app" in d)
        return n

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        from espcam import cli

        argv = ["ota", *args, "--broker", self.broker.url, "--data-dir", str(self.data),
                "--keys", str(self.keys)]
        return cli.main(argv)

    def record(self, node: str = "cam-1") -> NodeRecord:
        return NodeRecord.load(self.data / "ota", node)

    def status(self, node: str, state: str, start: int = 0, timeout: float = 60) -> dict:
        return self.obs.json_on(f"espcam/{node}/ota/status", lambda d: d.get("state") == state,
                                timeout, start)

    def outcome(self, node: str, state: str) -> dict:
        return wait_until(lambda: next((h for h in self.record(node).history
                                        if h["state"] == state), None), 30,
                          f"{state} in the backend's record")

    def close(self) -> None:
        self.backend.stop()


@pytest.fixture
def ota(broker, tmp_path, make_node, observer):
    o = Ota(broker, tmp_path, make_node, observer)
    yield o
    o.close()


def mark(node) -> dict:
    return json.loads((node.board / "ota.json").read_text())


def test_the_nodes_hmac_is_hmac_sha256():
    # The node writes HMAC itself (MicroPython has no hmac module): same bytes as CPython's.
    cases = [(b"key", b"The quick brown fox jumps over the lazy dog"), (b"k" * 100, b"x"),
             (bytes.fromhex(KEY), b'{"id":"0.1.1-1"}'), (b"", b"")]
    code = ("from espcam import ota\nimport binascii\n"
            + "".join(f"print(binascii.hexlify(ota.hmac_sha256({k!r}, {m!r})).decode())\n"
                      for k, m in cases))
    out = subprocess.run([micropython_binary(), "-c", code], capture_output=True, text=True,
                         env={"MICROPYPATH": micropython_path(NODE_SRC)}, cwd="/", check=True)
    assert out.stdout.split() == [hmac.new(k, m, hashlib.sha256).hexdigest() for k, m in cases]


VECTORS = json.loads((Path(__file__).parent / "vectors" / "ota.json").read_text())

_NODE_READS = """
import json, struct, binascii
from espcam import ota
class Link:
    def topic(self, leaf):
        return "espcam/cam-1/" + leaf
v = json.loads(open(VECTORS).read())
u = ota.Updater({"node_id": v["node"], "ota_key": v["key"]}, Link())
out = {"offer": u._check_offer(v["payload"]), "refused": []}
for name in ("tampered", "other_key"):
    try:
        u._check_offer(v[name])
        out["refused"].append(None)
    except ota.Refused as r:
        out["refused"].append(r.code)
out["pieces"] = [list(struct.unpack_from(ota.PIECE, binascii.unhexlify(p["bytes"]), 0))[3:]
                 + [binascii.hexlify(binascii.unhexlify(p["bytes"])[ota.PIECE_LEN:]).decode()]
                 for p in v["pieces"]]
print(json.dumps(out))
"""


def test_the_vectors_are_what_the_backend_makes_and_the_node_reads(tmp_path):
    from espcam.backend.otapack import encode_piece, sha256_hex, sign_offer

    v = VECTORS
    assert sign_offer(v["key"], v["offer"]) == v["payload"]
    assert v["offer"]["sha256"] == sha256_hex(v["manifest"].encode())
    for p in v["pieces"]:
        assert encode_piece(p["tag"], p["file"], p["offset"], bytes.fromhex(p["data"])).hex() \
            == p["bytes"]
    code = f"VECTORS = {str(Path(__file__).parent / 'vectors' / 'ota.json')!r}\n" + _NODE_READS
    out = subprocess.run([micropython_binary(), "-c", code], capture_output=True, text=True,
                         env={"MICROPYPATH": micropython_path(NODE_SRC)}, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["offer"] == v["offer"]
    assert got["refused"] == ["bad_signature", "bad_signature"]
    assert got["pieces"] == [[p["tag"], p["file"], p["offset"], p["data"]] for p in v["pieces"]]


def test_a_good_update_is_applied_and_reported(ota, tmp_path):
    node = ota.node()
    start = ota.obs.mark()
    # Compiled with mpy-cross for the MicroPython the node reports, as deploy does.
    assert ota.cli("cam-1", "--from", str(new_app(tmp_path / "v2", "0.1.1")),
                   "--summary", "test release") == 0
    done = ota.status("cam-1", "done", start)
    assert done["installed"] == "0.1.1" and done["version"] == "0.1.1"
    ota.obs.json_on("espcam/cam-1/state", lambda d: d.get("app") == "0.1.1", start=start)
    m = mark(node)
    assert m["app"] == "app_a" and m["trial"] is False and m["prev"] is None
    assert (node.board / "app_a" / "lib" / "espcam" / "app.mpy").is_file()
    assert not (node.board / "next").exists()
    assert ota.outcome("cam-1", "done")["version"] == "0.1.1"
    wait_until(lambda: not ota.record().offered, 30, "the offer withdrawn")
    ota.obs.topic("espcam/cam-1/ota/offer", start=start, payload=b"")
    assert ota.record().installed == "0.1.1"
    # A second update goes to the other slot and keeps this one as the previous app.
    # --wait follows it to the end: exit 0 once the node has said done.
    start = ota.obs.mark()
    assert ota.cli("cam-1", "--no-compile", "--wait", "120",
                   "--from", str(new_app(tmp_path / "v3", "0.1.2"))) == 0
    assert ota.status("cam-1", "done", start)["installed"] == "0.1.2"
    m = mark(node)
    assert m["app"] == "app_b" and m["prev"] == "app_a" and m["prev_ver"] == "0.1.1"


def test_a_power_cut_in_the_transfer_resumes_where_it_stopped(ota, tmp_path):
    node = ota.node()
    asked: list[dict] = []
    open_ = threading.Event()
    serve = ota.backend.ota._get

    def gated(name: str, payload: bytes) -> None:
        asked.append(json.loads(payload))
        if len(asked) <= 3 or open_.is_set():
            serve(name, payload)

    ota.backend.ota._get = gated
    start = ota.obs.mark()
    assert ota.cli("cam-1", "--no-compile", "--from", str(new_app(tmp_path / "v2", "0.1.1"))) == 0
    # Three windows served (the manifest, then files), the fourth never answered: the node is
    # in the middle of the transfer when its power goes.
    wait_until(lambda: len(asked) >= 4, 60, "the node's fourth window")
    node.kill()
    before = len(asked)
    had = {p: p.stat().st_size for p in (node.board / "next").rglob("*") if p.is_file()}
    assert had and not (node.board / "ota.json").exists()
    open_.set()
    node.start()
    assert ota.status("cam-1", "done", start)["installed"] == "0.1.1"
    assert "resumed at file" in node.log()
    first = asked[before]
    assert first["file"] >= 1 and (first["file"], first["offset"]) != (1, 0), first
    assert mark(node)["app"] == "app_a"


def test_a_corrupted_file_is_refused_and_the_app_stays(ota, tmp_path):
    node = ota.node()
    start = ota.obs.mark()
    assert ota.cli("cam-1", "--no-compile", "--stage",
                   "--from", str(new_app(tmp_path / "v2", "0.1.1"))) == 0
    rec = wait_until(lambda: ota.record().state == "staged" and ota.record(), 10, "staged")
    app = ota.data / "ota" / "packages" / rec.package / "files" / "lib" / "espcam" / "app.py"
    data = bytearray(app.read_bytes())
    data[100] ^= 0xFF   # same size, other bytes: only the hash can tell
    app.write_bytes(bytes(data))
    ota.obs.c.publish("espcam/cam-1/ota/install", "install", qos=1)
    failed = ota.status("cam-1", "failed", start)
    assert failed["code"] == "corrupt" and "app.py" in failed["error"]
    assert failed["installed"] == "0.1.0"
    assert ota.outcome("cam-1", "failed")["error"] == failed["error"]
    assert not (node.board / "next").exists() and not (node.board / "app_a").exists()
    assert mark(node).get("app") is None   # still the deployed app
    ota.obs.topic("espcam/cam-1/ota/offer", start=start, payload=b"")


def test_a_bad_or_missing_signature_is_refused_with_an_ack(ota, tmp_path):
    node = ota.node()
    (ota.keys / "cam-1.json").write_text(json.dumps({"ota_key": OTHER_KEY}))
    start = ota.obs.mark()
    # --wait sees the refusal: exit 3, as for a command the node refused.
    assert ota.cli("cam-1", "--no-compile", "--wait", "120",
                   "--from", str(new_app(tmp_path / "v2", "0.1.1"))) == 3
    ack = ota.obs.json_on("espcam/cam-1/ack", lambda d: d.get("cmd") == "update", start=start)
    assert ack["ok"] is False and ack["code"] == "bad_signature"
    assert ack["id"] == ota.record().package
    assert "bad_signature" in ota.outcome("cam-1", "refused")["error"]
    ota.obs.topic("espcam/cam-1/ota/offer", start=start, payload=b"")
    # An offer without a signature, straight on the topic (as a forger would).
    start = ota.obs.mark()
    text = json.dumps({"id": "x", "node": "cam-1", "version": "9", "size": 1,
                       "sha256": "00" * 32})
    ota.obs.c.publish("espcam/cam-1/ota/offer", json.dumps({"offer": text}), qos=1)
    ack = ota.obs.json_on("espcam/cam-1/ack", lambda d: d.get("cmd") == "update", start=start)
    assert ack["ok"] is False and ack["code"] == "no_signature"
    assert not (node.board / "next").exists() and not (node.board / "ota.json").exists()
    assert node.status == "running"


def test_an_app_that_crashes_at_boot_is_rolled_back_with_its_reason(ota, tmp_path):
    node = ota.node()
    start = ota.obs.mark()
    bad = new_app(tmp_path / "bad", "0.1.1", crash="boom in the new app")
    assert ota.cli("cam-1", "--no-compile", "--from", str(bad)) == 0
    back = ota.status("cam-1", "rolled_back", start, timeout=90)
    assert "boom in the new app" in back["error"] and back["installed"] == "0.1.0"
    assert back["version"] == "0.1.1"
    assert "boom in the new app" in ota.outcome("cam-1", "rolled_back")["error"]
    m = mark(node)
    assert m["app"] is None and m["trial"] is False and m["failed"] == ota.record().package
    ota.obs.json_on("espcam/cam-1/state", lambda d: d.get("app") == "0.1.0", start=start)
    # The retained offer is gone, and the node would skip it anyway: no second attempt.
    ota.obs.topic("espcam/cam-1/ota/offer", start=start, payload=b"")
    assert "update rolled back: RuntimeError: boom in the new app" in node.log()


def test_a_sleeping_node_is_updated_when_it_wakes(ota, tmp_path):
    node = ota.node(sleep_interval=3, awake=1)
    node.wait_for(lambda: node.sleeps, 60, "a first sleep")
    start = ota.obs.mark()
    assert ota.cli("cam-1", "--no-compile", "--from", str(new_app(tmp_path / "v2", "0.1.1"))) == 0
    assert ota.status("cam-1", "done", start, timeout=90)["installed"] == "0.1.1"
    assert ota.outcome("cam-1", "done")
    # It goes on sleeping and waking on its new app.
    n = len(node.sleeps)
    node.wait_for(lambda: len(node.sleeps) > n, 60, "a sleep on the new app")


def test_an_update_fits_the_heap_of_a_board_without_psram(ota, tmp_path):
    # The heap the streaming tests give the app (tests/test_e2e_heap.py), the app compiled as
    # deploy sends it: the transfer writes each piece to flash as it comes, so it needs a few
    # KB whatever the size of the app.
    node = ota.node(sim={"heapsize": "150k", "node_src": compiled_app(tmp_path / "deployed")})
    start = ota.obs.mark()
    assert ota.cli("cam-1", "--from", str(new_app(tmp_path / "v2", "0.1.1"))) == 0
    assert ota.status("cam-1", "done", start, timeout=90)["installed"] == "0.1.1"
    free = [json.loads(m.payload)["heap_free"] for m in ota.obs.msgs[start:]
            if m.topic == "espcam/cam-1/ota/status" and b'"downloading"' in m.payload]
    assert len(free) >= 5
    assert "MemoryError" not in node.log()
    # An app sent as .py, then one more update from it: ota.py compiled from source needs
    # more than the heap may have in one piece by then, so the node may restart once to load
    # it first thing (docs/protocol.md, "Updates", no_heap); the update goes through.
    for version, how in (("0.1.2", ["--no-compile"]), ("0.1.3", [])):
        start = ota.obs.mark()
        assert ota.cli("cam-1", *how, "--from", str(new_app(tmp_path / version, version))) == 0
        assert ota.status("cam-1", "done", start, timeout=90)["installed"] == version
    wait_until(lambda: not (node.board / "ota_early").exists(), 30, "ota_early gone")


def test_an_app_that_never_reaches_the_broker_goes_back_after_its_deadline(ota, tmp_path):
    node = ota.node()
    start = ota.obs.mark()
    # This app's link refuses every connection: it runs, but never publishes a birth.
    lost = new_app(tmp_path / "lost", "0.1.1")
    link = lost / "lib" / "espcam" / "link.py"
    text = link.read_text()
    marker = "        present = self.mq.connect(clean_session=False)\n"
    assert marker in text
    link.write_text(text.replace(marker, '        raise OSError("this app never connects")\n'
                                         + marker))
    assert ota.cli("cam-1", "--no-compile", "--deadline", "3", "--from", str(lost)) == 0
    back = ota.status("cam-1", "rolled_back", start, timeout=90)
    assert back["error"] == "no birth within 3 s" and back["installed"] == "0.1.0"
    assert "this app never connects" in node.log()
    assert mark(node)["app"] is None


def test_an_app_in_a_boot_loop_is_rolled_back_by_boot_py(ota, tmp_path):
    node = ota.node()
    start = ota.obs.mark()
    # Resets the chip as it loads, before anything of the app could report: only boot.py's
    # count of boots on trial brings the previous app back.
    loop = new_app(tmp_path / "loop", "0.1.1", head="import machine\nmachine.reset()\n")
    assert ota.cli("cam-1", "--no-compile", "--from", str(loop)) == 0
    back = ota.status("cam-1", "rolled_back", start, timeout=90)
    assert back["error"] == "no birth in 3 boots" and back["installed"] == "0.1.0"
    assert node.boots >= 5   # the first, the trial boots, the one after the rollback


def test_provision_gives_each_node_its_own_key_and_deploy_never_prints_it(tmp_path):
    from espcam.provision import nodeconfig
    from espcam.provision.provisioning import ProvisionOptions, provision_node

    passwd = tmp_path / "passwd"
    passwd.touch()
    said: list[str] = []
    keys = []
    for node in ("cam-a", "cam-b"):
        out = tmp_path / "nodes" / f"{node}.json"
        assert provision_node(ProvisionOptions(node, "home", "pw", "10.0.0.2:1883",
                                               passwd_file=passwd, config_out=out),
                              said.append) == 0
        cfg = json.loads(out.read_text())
        assert len(bytes.fromhex(cfg["ota_key"])) == 32
        assert nodeconfig.redacted(cfg)["ota_key"] == nodeconfig.SECRET
        keys.append(cfg["ota_key"])
    assert keys[0] != keys[1]
    assert not any(k in line for k in keys for line in said)


def test_the_backend_serves_a_node_only_the_update_offered_to_it(ota, tmp_path):
    for name in ("cam-1", "cam-2"):
        (ota.keys / f"{name}.json").write_text(json.dumps({"ota_key": KEY}))
    assert ota.cli("cam-1", "--no-compile", "--stage",
                   "--from", str(new_app(tmp_path / "v2", "0.1.1"))) == 0
    pid = ota.record("cam-1").package
    start = ota.obs.mark()
    ask = {"id": pid, "file": 0, "offset": 0, "len": 100}
    ota.obs.c.publish("espcam/cam-2/ota/get", json.dumps(ask), qos=1)   # not offered to cam-2
    ota.obs.c.publish("espcam/cam-1/ota/get", json.dumps({**ask, "id": "0.1.1-0-000000"}),
                      qos=1)   # not the update staged for cam-1
    ota.obs.c.publish("espcam/cam-1/ota/get", json.dumps({**ask, "len": 10 ** 6}), qos=1)
    ota.obs.c.publish("espcam/cam-1/ota/get", json.dumps(ask), qos=1)
    piece = ota.obs.topic("espcam/cam-1/ota/piece", start=start)
    manifest = (ota.data / "ota" / "packages" / pid / "manifest.json").read_bytes()
    assert piece.payload[14:] == manifest[:100]
    # In order on one connection: the three before it were answered with nothing.
    pieces = [m for m in ota.obs.msgs[start:] if m.topic.endswith("/ota/piece")]
    assert len(pieces) == 1
    assert ota.backend.ota.counters["bad_gets"] == 3
