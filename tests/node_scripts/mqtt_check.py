# Runs ON MicroPython: the node's MQTT client (espcam.mqtt) against a real broker.
#   mqtt_check.py <host> <port> <case> [<user> <password>]
# Prints one line per thing a broker's peer would observe, then "done". Cases:
#   basics   sessions, subscribe, QoS 0/1 both ways, non-ASCII, an oversize message, packet ids
#            wrapping at 65535, ping, a queued message on reconnect, a broker closing the stream
#   login    connect with the given credentials: "refused <why>" or "session <present>"
#   silent   connect to an address that accepts and never answers (1 s timeout)
#   frozen   connect, print "ready", read a line from stdin (the test freezes the broker
#            meanwhile), then publish at QoS 1 (1 s timeout)
import gc
import sys
import time

from espcam import mqtt

host, port, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
got = []


def client(cid, timeout=5, **kw):
    c = mqtt.MQTT(cid, host, port, keepalive=30, timeout=timeout, **kw)
    c.cb = lambda topic, msg: got.append((topic, msg))
    return c


def receive(c, n):
    # Until n messages have arrived (each check waits at most 100 ms; 50 of them at most).
    for _ in range(50):
        if len(got) >= n:
            break
        c.check(100)
    out = got[:n]
    del got[:n]
    return out


def show(msgs):
    for topic, msg in msgs:
        if msg is mqtt.TOO_BIG:
            print("got", topic.decode(), "TOO_BIG")
        else:
            print("got", topic.decode(), msg.decode())


if case == "basics":
    c = client("mq-check")
    gc.collect()
    before = gc.mem_free()
    print("session", c.connect())
    gc.collect()
    print("heap", before - gc.mem_free())   # what a connection keeps (not asserted)
    print("granted", c.subscribe("t/in", 1))
    c.publish("t/in", b"hello", qos=1)
    c.publish("t/in", "zero", qos=0)
    c.publish("t/in", "caf\u00e9 \u2615", qos=1)   # 6 characters, 9 bytes
    c.publish("t/in", b"x" * 2000, qos=1)
    c.publish("t/in", b"after", qos=1)
    show(receive(c, 5))
    c.pid = 65533
    pids = []
    for i in range(4):
        c.publish("t/in", "id %d" % i, qos=1)
        pids.append(c.pid)
    print("pids", pids)
    show(receive(c, 4))
    rx = c.last_rx
    time.sleep_ms(20)
    c.ping()
    for _ in range(50):
        if c.last_rx != rx:
            break
        c.check(100)
    print("pong", c.last_rx != rx)
    c.disconnect()
    other = client("mq-check-2")
    other.connect(clean_session=True)
    other.publish("t/in", b"queued", qos=1)
    other.disconnect()
    print("session", c.connect())
    c.subscribe("t/in", 1)
    show(receive(c, 1))
    client("mq-check").connect()   # takes the session over: the broker closes c's stream
    try:
        for _ in range(50):
            c.check(100)
        print("still open")
    except mqtt.MQTTError as e:
        print("closed", e)
elif case == "login":
    c = client("mq-login", user=sys.argv[4], password=sys.argv[5])
    try:
        print("session", c.connect())
    except mqtt.MQTTError as e:
        print("refused", e)
elif case == "silent":
    c = client("mq-silent", timeout=1)
    try:
        c.connect()
        print("connected")
    except mqtt.MQTTError as e:
        print("failed", e)
elif case == "frozen":
    c = client("mq-frozen", timeout=1)
    c.connect()
    print("ready")
    sys.stdin.readline()
    try:
        c.publish("t/x", b"into the void", qos=1)
        print("acknowledged")
    except mqtt.MQTTError as e:
        print("failed", e)
print("done")
