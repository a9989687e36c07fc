# Runs ON MicroPython as a simulated board's main.py (bench item 2). It wraps the node's own
# functions with ticks_us timers, then runs the real node/main.py unmodified. Each section prints
# "bench: <section> <start us> <duration us>" with start counted from this file's first line.
# bench/duty.py writes REAL_MAIN above this text.
import time

T0 = time.ticks_us()

from espcam import app, frames, hw, mqtt  # noqa: E402
from espcam.link import Link  # noqa: E402

ACK = [0]
FEED = [0]


def _report(label, t, extra=0):
    now = time.ticks_us()
    print("bench:", label, time.ticks_diff(t, T0), time.ticks_diff(now, t) - extra)


def wrap(owner, name, label):
    f = getattr(owner, name)

    def w(*a, **k):
        t = time.ticks_us()
        try:
            return f(*a, **k)
        finally:
            _report(label, t)

    setattr(owner, name, w)


def wrap_send():
    # Sender.send: the PUBACK wait of the last chunk happens in the MQTT client's _wait, and
    # the watchdog is fed after every chunk (in the simulator a file write); both are split
    # out, as "ack_wait" and "wdt_feed".
    f = frames.Sender.send
    g = mqtt.MQTT._wait

    def wait(self, want, pid, what):
        t = time.ticks_us()
        try:
            return g(self, want, pid, what)
        finally:
            ACK[0] += time.ticks_diff(time.ticks_us(), t)

    def send(self, mq, frame, only=None, feed=None, resent=False):
        ACK[0] = 0
        FEED[0] = 0
        timed_feed = None
        if feed is not None:
            def timed_feed():
                t = time.ticks_us()
                feed()
                FEED[0] += time.ticks_diff(time.ticks_us(), t)
        t = time.ticks_us()
        try:
            return f(self, mq, frame, only, timed_feed, resent)
        finally:
            _report("publish", t, ACK[0] + FEED[0])
            print("bench:", "ack_wait", 0, ACK[0])
            print("bench:", "wdt_feed", 0, FEED[0])

    mqtt.MQTT._wait = wait
    frames.Sender.send = send


wrap(hw, "camera_init", "camera_init")
wrap(hw, "wifi_connect", "wifi")
wrap(hw, "sync_clock", "ntp")
wrap(Link, "connect", "broker_connect")
wrap(app.Node, "publish_state", "state")
wrap(hw, "camera_capture", "capture")
wrap(frames.Frame, "__init__", "crc")
wrap_send()
_deepsleep = hw.deepsleep


def deepsleep(ms, pir_pin=None):
    print("bench:", "sleep_call", time.ticks_diff(time.ticks_us(), T0), 0)
    return _deepsleep(ms, pir_pin)


hw.deepsleep = deepsleep
_sleep = app.Node.sleep


def node_sleep(self, seconds):
    t = time.ticks_us()
    print("bench:", "goodbye_start", time.ticks_diff(t, T0), 0)
    return _sleep(self, seconds)


app.Node.sleep = node_sleep
print("bench:", "main_start", 0, 0)
with open(REAL_MAIN) as _f:  # noqa: F821 (defined by bench/duty.py above this text)
    exec(_f.read())
