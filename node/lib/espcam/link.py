# The node's connection to the broker: its topics, the connect sequence (session, command and
# confirmation subscriptions, `online`) and the watch on a link that has gone quiet, over the
# node's own MQTT client (mqtt.py), in TLS when broker.tls says so (secure.py).
import time

from espcam import mqtt, protocol


class Link:
    def __init__(self, cfg, on_message):
        b = cfg["broker"]
        node = cfg["node_id"]
        self.base = cfg["prefix"] + "/" + node + "/"
        self.keepalive = cfg["keepalive"]
        wrap = None
        if b.get("tls"):
            from espcam import secure
            wrap = secure.wrapper(b)
        self.mq = mqtt.MQTT(node, b["host"], b["port"], b.get("user"), b.get("password"),
                            self.keepalive, cfg["socket_timeout"],
                            (self.topic("availability"), b"offline", True, 1), wrap)
        self.mq.cb = on_message
        self.up = False

    def topic(self, leaf):
        return self.base + leaf

    def connect(self):
        # Returns True if the broker still had our session (queued commands and confirmations
        # follow). Commands, confirmations and updates (ota.py) in one SUBSCRIBE, one round
        # trip per connection, all at QoS 1 (the confirm topic's QoS, protocol.json).
        present = self.mq.connect(clean_session=False)
        self.up = True
        self.mq.subscribe((self.topic("cmd"), self.topic("confirm"), self.topic("ota/offer"),
                           self.topic("ota/piece")), protocol.CONFIRM_QOS)
        self.publish("availability", b"online", retain=True, qos=1)
        return present

    def publish(self, leaf, msg, retain=False, qos=0):
        self.mq.publish(self.base + leaf, msg, retain, qos)

    def wait(self, ms):
        # Waits up to ms for traffic and dispatches every message that has arrived.
        self.mq.check(ms)

    def ping(self):
        # The broker answers every ping, so silence for 1.5 keepalives means a dead link that
        # TCP has not noticed yet (Wi-Fi gone without a reset): give up on it now.
        quiet = time.ticks_diff(time.ticks_ms(), self.mq.last_rx)
        if quiet > self.keepalive * 1500:
            raise OSError("no traffic from the broker for %d s" % (quiet // 1000))
        self.mq.ping()

    def close(self, goodbye=False):
        # goodbye: a clean DISCONNECT, so the broker does not publish our last will.
        self.up = False
        if goodbye and self.mq.sock is not None:
            try:
                self.mq.disconnect()
            except Exception:
                pass
        self.mq.close()
