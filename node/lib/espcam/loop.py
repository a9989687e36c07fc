# The main loop (docs/node.md, "What the node does"): connect, back off and capture into the
# spool while the link is down, one pass of commands, captures, resends and sleep while it is
# up. A part of app.Node (a base class), in a module of its own so that a board running .py
# files compiles the app in pieces (docs/node.md, "Memory").
import gc
import time

from espcam import VERSION, hw
from espcam.outbox import log
from espcam.power import Power

STATE_EVERY_MS = 300000
BACKOFF_MAX_MS = 60000
DUTY_GIVE_UP_MS = 60000   # a duty-cycle node that cannot reach the broker goes back to sleep
SETTLE_MS = 2000          # after a connect, time for the session's queued confirms to arrive


class Loop(Power):
    def _schedule_interval(self):
        iv = self.cfg["interval"]
        self.next_interval = time.ticks_add(time.ticks_ms(), iv * 1000) if iv else None

    def connect(self):
        cfg = self.cfg
        if not hw.wifi_connected():
            st = cfg["wifi"].get("static")
            static = (st["ip"], st["netmask"], st["gateway"], st["dns"]) if st else None
            ip = hw.wifi_connect(cfg["wifi"]["ssid"], cfg["wifi"]["password"], static,
                                 cfg["wifi_timeout"] * 1000, hw.feed)
            log("wifi up, ip", ip)
            if hw.unix_time() is None:
                hw.sync_clock()
        elif cfg["broker"]["tls"] and hw.unix_time() is None:
            # mbedtls checks the certificate's dates against the clock: without NTP every
            # handshake fails, so every attempt tries NTP again.
            hw.sync_clock()
        # The connection's objects live as long as it does: collect first, so that they land at
        # the bottom of the heap instead of splitting the free space a frame needs.
        gc.collect()
        self.link.connect()
        log("connected to", cfg["broker"]["host"], "as", cfg["node_id"])
        self.backoff = 1000
        self.next_ping = time.ticks_add(time.ticks_ms(), cfg["keepalive"] * 500)
        self.publish_state()
        if self.ota is not None:
            self.ota.born()   # the birth is out: an update on trial has made it (ota.py)
        self.publish_ring()   # a ring made while offline, before its frame is sent again
        # Everything held goes out again once the confirms queued in the session are in.
        self.settle_at = time.ticks_add(time.ticks_ms(), SETTLE_MS)
        self.before = self.ids.last   # frames up to this one were captured before this connect

    def wait_backoff(self):
        # Captures go on meanwhile, into the spool, to be sent after the reconnect.
        log("retry in", self.backoff // 1000, "s")
        end = time.ticks_add(time.ticks_ms(), self.backoff)
        while time.ticks_diff(end, time.ticks_ms()) > 0:
            hw.feed()
            hw.idle()
            if self.ota is not None:
                self.ota.overdue(time.ticks_ms())
            try:
                self._captures_due(time.ticks_ms())
            except Exception as e:
                log("capture failed:", repr(e))
            time.sleep_ms(100)
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_MS)

    def first_capture(self):
        # What this boot owes: a ring, a motion wake, a duty-cycle wake, or the first interval
        # frame.
        if self.wake == "button":
            return "button"
        if self.wake == "pin":
            return "motion"
        if self.cfg["sleep_interval"]:
            return "wake" if self.reset_cause == "deepsleep" else "boot"
        if self.cfg["interval"]:
            return "boot"
        return None

    def tick(self):
        # One pass of the main loop while connected.
        cfg = self.cfg
        wait = 100
        if self.duty_sleep_at is not None:
            # A duty-cycle node sleeps the moment its awake time is up: every ms costs battery.
            left = time.ticks_diff(self.duty_sleep_at, time.ticks_ms())
            if 0 <= left < wait:
                wait = left
        self.link.wait(wait)
        self._confirmations()
        while self.pending:
            self._handle(self.pending.pop(0))
        while self.dropped:
            cid, cmd = self.dropped.pop(0)
            self._ack(cid, cmd, error="node busy: command dropped, send it again")
        if self.dropped_more:
            n, self.dropped_more = self.dropped_more, 0
            self._ack(None, None, error="%d more commands dropped: node busy" % n)
        now = time.ticks_ms()
        if self.pulse_off_at is not None and time.ticks_diff(now, self.pulse_off_at) >= 0:
            hw.flash(False)
            self.pulse_off_at = None
            self.publish_state()
        self._captures_due(now)
        if time.ticks_diff(now, self.next_state) >= 0:
            self.publish_state()
        if cfg["keepalive"] and time.ticks_diff(now, self.next_ping) >= 0:
            self.link.ping()
            self.next_ping = time.ticks_add(now, cfg["keepalive"] * 500)
        self._resend(time.ticks_ms())
        self.ota_step(time.ticks_ms())
        if self.spool.changed:
            self._rtc_write()
        # A duty-cycle node stays awake while it fetches an update (ota.py).
        if self.duty_sleep_at is not None and not self.ota_busy() and \
                self.duty_done(time.ticks_ms()):
            self.sleep(cfg["sleep_interval"])

    def camera_start(self):
        cfg = self.cfg
        if hw.camera_init(cfg["frame_size"], cfg["quality"]):
            if self.cam_reset:
                self.cam_reset = False
                self._rtc_write()
            return
        log("camera:", hw.camera_error)
        if self.reset_cause == "soft" and not self.cam_reset:
            # Some boards' camera only probes again after the chip itself is reset. Once: the
            # flag in RTC memory stops a loop whatever cause the next boot reports (older ESP32
            # firmware reports machine.reset() as a soft reset too).
            log("camera failed after a soft reset: resetting the chip once")
            self.cam_reset = True
            self._rtc_write()
            hw.reset()

    def owe(self, trigger):
        # What first_capture() said this boot owes: a button wake rings first. A boot of a
        # duty cycle goes back to sleep `awake` s after it is paid and the link is up.
        self.duty_owed = bool(self.cfg["sleep_interval"])
        if trigger == "button":
            self.ring(self.woke_at)
        else:
            self.capture(trigger)

    def run(self):
        cfg = self.cfg
        log("app", VERSION, "node", cfg["node_id"], "reset", self.reset_cause, "wake", self.wake)
        hw.release_holds()
        # The inputs first: a nap back to sleep (rest) reads them to decide which to arm.
        if cfg["button_pin"] is not None:
            hw.button_start(cfg["button_pin"], cfg["button_level"])
        if cfg["pir_pin"] is not None:
            hw.pir_start(cfg["pir_pin"])
        self.rest()
        if cfg["watchdog"]:
            hw.watchdog_start(cfg["watchdog"] * 1000)
        # The camera's objects (a driver loaded from .py, with its compiler garbage) and the
        # spool's live as long as the app: collect first, so that they land at the bottom of
        # the heap instead of splitting the free block the module driver's frames need.
        gc.collect()
        # And collect whenever an eighth of the free heap has been allocated since the last
        # collection: the frames of the functions that call the camera (tick, capture: the VM
        # puts those with many locals on the heap) are allocated before capture() collects.
        # Once a second's garbage filled the small holes, they landed just above the last
        # frame's buffer and, with it gone, split the block the next frame needed (MemoryError
        # for one larger than the last, with nothing left in the spool to drop).
        gc.threshold(gc.mem_free() // 8)
        self.camera_start()
        self.start_spool()
        owed = self.first_capture()
        self._schedule_interval()
        started = time.ticks_ms()
        while True:
            hw.feed()
            if not self.link.up:
                try:
                    self.connect()
                except Exception as e:   # OSError, MQTTError (a refusal) among them
                    log("connect failed:", repr(e))
                    self.link.close()
                    if owed is not None:
                        # What this boot owes is captured now, into the spool, not skipped.
                        trigger, owed = owed, None
                        try:
                            self.owe(trigger)
                        except Exception as e:
                            log("capture failed:", repr(e))
                    if cfg["sleep_interval"] and \
                            time.ticks_diff(time.ticks_ms(), started) > DUTY_GIVE_UP_MS:
                        self.sleep(cfg["sleep_interval"])
                    self.wait_backoff()
                    continue
                if owed is not None:
                    trigger, owed = owed, None
                    try:
                        self.owe(trigger)
                    except Exception as e:
                        log("link lost while sending:", repr(e))
                        self.link.close()
                        continue
                if self.duty_owed:
                    self.duty_owed = False
                    self.duty_sleep_at = time.ticks_add(time.ticks_ms(), cfg["awake"] * 1000)
            try:
                self.tick()
            except MemoryError:
                self._shed()
                if self.link.mq.mid:
                    self.link.close()   # the MQTT client was in the middle of a packet
            except Exception as e:
                log("link lost:", repr(e))
                self.link.close()
            hw.idle()
