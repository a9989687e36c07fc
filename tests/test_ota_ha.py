"""Updates as Home Assistant and the shipped broker see them: the update entity through an
update installed from Home Assistant, and the ACL that keeps one node from updating another."""

from __future__ import annotations

import json

from broker import Broker
from espcam.provision.credentials import add_user
from hass import HomeAssistant
from observer import Observer
from provision_helpers import production_broker_config
from test_ota import Ota, new_app


def test_the_update_entity_through_an_update_installed_from_home_assistant(
        broker, tmp_path, make_node, everything):
    ota = Ota(broker, tmp_path, make_node, everything)
    try:
        ota.node()
        ha = HomeAssistant(everything, "cam-1")
        c = ha.entity("firmware")
        assert c["platform"] == "update" and c["device_class"] == "firmware"
        # Staged: Home Assistant offers the new version, nothing runs yet.
        assert ota.cli("cam-1", "--no-compile", "--stage", "--summary", "faster frames",
                       "--from", str(new_app(tmp_path / "v2", "0.1.1"))) == 0
        staged = ha.wait_state("firmware", lambda s: s and s.get("latest_version") == "0.1.1")
        assert staged["installed_version"] == "0.1.0" and staged["in_progress"] is False
        assert staged["release_summary"] == "faster frames"
        assert staged["update_percentage"] is None
        assert ha.available("firmware")
        # Install, as Home Assistant's button publishes it: progress, then the new version.
        mark = ha.publish("firmware", "install")
        done = ha.wait_state("firmware", lambda s: s["installed_version"] == "0.1.1"
                             and not s["in_progress"], mark)
        assert done["latest_version"] == "0.1.1" and done["update_percentage"] is None
        seen = ha.states("firmware", mark)
        running = [s for s in seen if s["in_progress"]]
        assert running, seen
        pcts = [s["update_percentage"] for s in running if s["update_percentage"] is not None]
        assert pcts and pcts == sorted(pcts) and all(0 <= p <= 100 for p in pcts)
        assert seen[-1]["update_percentage"] is None
    finally:
        ota.close()


def test_under_the_shipped_acl_a_node_cannot_update_another(tmp_path):
    passwd = tmp_path / "broker" / "passwd"
    passwd.parent.mkdir()
    passwd.touch()
    pw = {u: add_user(passwd, u) for u in ("cam-1", "cam-2", "espcam-backend")}
    b = Broker(tmp_path / "broker", extra=production_broker_config(passwd)).start()
    try:
        backend = Observer(b.host, b.port, "espcam/#", user="espcam-backend",
                           password=pw["espcam-backend"])
        victim = Observer(b.host, b.port, "espcam/cam-1/ota/#", user="cam-1",
                          password=pw["cam-1"])
        rogue = Observer(b.host, b.port, "espcam/cam-2/ota/#", user="cam-2",
                         password=pw["cam-2"])
        offer = json.dumps({"offer": json.dumps({"id": "x", "node": "cam-1"}), "sig": "00"})
        for t, p in (("espcam/cam-1/ota/offer", offer), ("espcam/cam-1/ota/piece", b"EU"),
                     ("espcam/cam-1/ota/status", "{}"), ("espcam/cam-1/ota/get", "{}")):
            rogue.c.publish(t, p, qos=1).wait_for_publish(10)
        # What cam-2 may do on its own topics gets through, and after it (one connection, in
        # order) nothing of the above has reached anyone.
        rogue.c.publish("espcam/cam-2/ota/get", "{}", qos=1).wait_for_publish(10)
        backend.topic("espcam/cam-2/ota/get")
        assert [m.topic for m in backend.msgs if m.topic.startswith("espcam/cam-1/")] == []
        assert victim.msgs == []
        # The backend's own offer does reach cam-1.
        backend.c.publish("espcam/cam-1/ota/offer", offer, qos=1).wait_for_publish(10)
        victim.topic("espcam/cam-1/ota/offer")
        for o in (backend, victim, rogue):
            o.close()
    finally:
        b.stop()
