# Runs ON MicroPython: stands in for the node's MQTT link in protocol tests. It takes the
# PUBLISH packets the node's Sender writes (head and payload, as Link.send_chunk gets them),
# checks their MQTT framing and keeps the payloads, so the tests see exactly what a broker
# would be handed.


class PacketLink:
    def __init__(self, topic="espcam/t/frame", keep=True):
        self.topic_name = topic
        self.msgs = []        # (payload bytes, qos)
        self.keep = keep
        self.pid = 0

    def topic(self, leaf):
        return "espcam/t/" + leaf

    def next_pid(self):
        self.pid = self.pid % 65535 + 1
        return self.pid

    def send_chunk(self, head, hoff, hlen, data, doff, dlen, pid):
        if not self.keep:
            return
        b = bytes(head[hoff:hoff + hlen]) + bytes(memoryview(data)[doff:doff + dlen])
        qos = (b[0] >> 1) & 3
        if b[0] & 0xF0 != 0x30 or b[0] & 1 or qos != (1 if pid else 0):
            raise ValueError("bad PUBLISH fixed header %02x" % b[0])
        n = 0
        shift = 0
        i = 1
        while True:
            d = b[i]
            n |= (d & 0x7F) << shift
            shift += 7
            i += 1
            if not d & 0x80:
                break
        if n != len(b) - i:
            raise ValueError("remaining length %d, packet has %d" % (n, len(b) - i))
        tl = b[i] << 8 | b[i + 1]
        topic = b[i + 2:i + 2 + tl].decode()
        if topic != self.topic_name:
            raise ValueError("topic %r" % topic)
        i += 2 + tl
        if qos:
            if (b[i] << 8 | b[i + 1]) != pid:
                raise ValueError("packet id")
            i += 2
        self.msgs.append((b[i:], qos))
