# Runs ON MicroPython: the node's TLS (espcam.secure) and MQTT client against a real broker.
#   tls_check.py <host> <port> <ca> <server_hostname> <case> [<plain port>]
# <ca>: the name of a file holding the CA's PEM, as broker.ca in config.json may be (this
# port's argv does not carry PEM text whole). Prints what a person would check, then "done".
# Cases:
#   context   connect through ssl.SSLContext (MicroPython 1.21 and later), publish at QoS 1
#   legacy    the same through ssl.wrap_socket(cadata=...), as on MicroPython 1.20, which has
#             no SSLContext
#   heap      what the SSLContext, a TLS connection and a plain connection (to <plain port>)
#             take of the MicroPython heap
#   silent    connect to an address that accepts and never answers (1 s timeout)
# MICROPYPATH must name .frozen: the port's ssl is a frozen module, as on the ESP32.
import gc
import sys

from espcam import config, mqtt, secure

host, port, ca, name, case = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]


def broker(**kw):
    b = {"host": host, "port": port, "tls": True, "ca": ca, "server_hostname": name}
    b.update(kw)
    return b


def client(cid, wrap, p=None, timeout=5):
    return mqtt.MQTT(cid, host, port if p is None else p, keepalive=30, timeout=timeout,
                     wrap=wrap)


def connect(cid, wrap, timeout=5):
    c = client(cid, wrap, timeout=timeout)
    try:
        c.connect()
    except OSError as e:   # secure.TLSError among them
        print("failed", type(e).__name__, e.args[0])
        c.close()
        return None
    return c


if case in ("context", "legacy"):
    if case == "legacy":
        import ssl

        class Old:
            # The ssl module as MicroPython 1.20 had it: wrap_socket(cadata=...), no SSLContext.
            CERT_REQUIRED = ssl.CERT_REQUIRED
            wrap_socket = ssl.wrap_socket

        sys.modules["ssl"] = Old
    try:
        wrap = secure.wrapper(broker())
    except config.ConfigError as e:
        print("config", e)
    else:
        c = connect("tls-check", wrap)
        if c is not None:
            got = []
            c.cb = lambda topic, msg: got.append(msg)
            c.subscribe("t/tls", 1)
            c.publish("t/tls", b"over tls", qos=1)
            for _ in range(50):
                if got:
                    break
                c.check(100)
            print("connected", got)
            c.disconnect()
elif case == "heap":
    gc.collect()
    before = gc.mem_free()
    c = client("tls-heap", None, int(sys.argv[6]))
    c.connect()
    gc.collect()
    print("plain connection", before - gc.mem_free())
    c.disconnect()
    c = None
    gc.collect()
    before = gc.mem_free()
    wrap = secure.wrapper(broker())
    gc.collect()
    made = gc.mem_free()
    print("context", before - made)
    c = client("tls-heap", wrap)
    c.connect()
    gc.collect()
    print("tls connection", made - gc.mem_free())
    c.disconnect()
elif case == "silent":
    connect("tls-silent", secure.wrapper(broker()), timeout=1)
print("done")
