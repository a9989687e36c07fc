# Runs ON MicroPython: stands in for the node's MQTT client (espcam.mqtt.MQTT) in protocol
# tests. It takes each PUBLISH the node's Sender hands the client (publish_from: a head buffer
# made by mqtt.publish_buffer, then the payload from the frame's buffer), checks the topic and
# the layout of the head, and keeps the message, so the tests see exactly the messages a broker
# would be handed. The MQTT framing itself is the client's, tested against a real broker.


class MessageSink:
    def __init__(self, topic="espcam/t/frame", keep=True):
        self.topic_name = topic
        self.msgs = []        # (payload bytes, qos)
        self.keep = keep

    def publish_from(self, buf, off, end, data, doff, dlen, qos):
        if not self.keep:
            return
        tl = buf[4] << 8 | buf[5]
        topic = bytes(buf[6:6 + tl]).decode()
        if topic != self.topic_name:
            raise ValueError("topic %r" % topic)
        if off != 6 + tl + (2 if qos else 0) or qos not in (0, 1):
            raise ValueError("head laid out for the wrong QoS")
        self.msgs.append((bytes(buf[off:end]) + bytes(memoryview(data)[doff:doff + dlen]), qos))
