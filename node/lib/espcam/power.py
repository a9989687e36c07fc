# Deep sleep (docs/node.md, "On `sleep` or a duty cycle"): saying goodbye, waiting for the
# confirmations a RAM spool would otherwise lose, the PIR's and the doorbell button's wakes and
# cooldowns, and when a duty-cycle node is done for this wake. A part of app.Node (a base
# class), in a module of its own so that a board running .py files compiles the app in pieces
# (docs/node.md, "Memory").
import time

from espcam import hw
from espcam.outbox import Outbox, log

RECHECK_S = 5             # a PIR output still high, a button still held: look again after this


class Power(Outbox):
    def sleep(self, seconds):
        cfg = self.cfg
        end = time.time() + seconds
        now = hw.unix_time()
        self.sleep_until = now + seconds if now else None
        hw.flash(False)   # off for the sleep, so the state published now says off
        self.pulse_off_at = None
        sp = self.spool
        if sp is not None and sp.kind == "ram" and sp.ids and self.duty_sleep_at is None:
            self._await_confirms(cfg["awake"] * 1000)
        if sp is not None:
            sp.sleeping()
        if self.link.up:
            try:
                self.publish_state()
                self.link.publish("availability", b"sleeping", retain=True, qos=1)
                self.link.close(goodbye=True)
            except Exception as e:
                # Sleep all the same: a duty-cycle node must not drain its battery retrying.
                log("could not say goodbye:", repr(e))
                self.link.close()
        log("deep sleep for", seconds, "s")
        try:
            self.doze(end, seconds)
        except Exception as e:
            # The chip refused (hw has undone the pin holds): stay awake and reconnect.
            log("deep sleep failed, staying awake:", repr(e))
            self.sleep_until = None
            self.until = None
            self.duty_sleep_at = None
            hw.camera_init(cfg["frame_size"], cfg["quality"])
            if self.spool is not None and self.spool.kind == "sd":
                try:
                    hw.sd_mount()
                except OSError as e:
                    log("spool: the card did not come back:", repr(e))

    def _await_confirms(self, ms):
        # A RAM spool loses what is unconfirmed at a deep sleep: give confirmations up to ms.
        end = time.ticks_add(time.ticks_ms(), ms)
        try:
            while self.spool.ids and self.link.up:
                left = time.ticks_diff(end, time.ticks_ms())
                if left <= 0:
                    return
                hw.feed()
                self.link.wait(left if left < 100 else 100)
                self._confirmations()
        except Exception as e:
            log("link lost while waiting for confirms:", repr(e))
            self.link.close()

    def cooldown_left(self, now):
        if self.motion_at is None:
            return 0
        return min(self.motion_at + self.cfg["motion_cooldown"] - now,
                   self.cfg["motion_cooldown"])

    def ring_left(self, now):
        if self.ring_at is None:
            return 0
        return min(self.ring_at + self.cfg["ring_cooldown"] - now, self.cfg["ring_cooldown"])

    def doze(self, end, left=None):
        # Deep sleep until `end` (time.time() seconds). The ESP32 wakes on a level, not an edge:
        # a PIR output still high, or a button still held, would wake the chip at once, and
        # within a cooldown the wake would only be ignored. Such an input is not armed: the
        # chip sleeps by timer until it can be, and comes back to sleep out the rest with it
        # armed (run() does that before anything else). The other input stays armed meanwhile.
        cfg = self.cfg
        if left is None:
            left = max(1, end - time.time())
        now = time.time()
        wait = None
        pir = cfg["pir_pin"]
        if pir is not None:
            w = self.cooldown_left(now)
            if hw.pir_high(pir):
                w = max(w, RECHECK_S)
            if w > 0:
                pir = None
                wait = w
        button = cfg["button_pin"] is not None
        if button:
            w = self.ring_left(now)
            if hw.button_pressed():
                w = max(w, RECHECK_S)
            if w > 0:
                button = False
                wait = w if wait is None or w < wait else wait
        self.until = None
        if wait is not None and wait < left:
            self.until = end
            left = wait
        if self.spool is not None:
            self.spool.sleeping()
        self._rtc_write()
        if button:
            hw.deepsleep(int(left * 1000), pir, True)
        else:
            # bench/mpy/duty_main.py wraps deepsleep(ms, pir_pin): no third argument unless needed.
            hw.deepsleep(int(left * 1000), pir)

    def rest(self):
        # A timer wake in the middle of a sleep (see doze): back to sleep at once, no Wi-Fi.
        until, self.until = self.until, None
        if until is None or self.reset_cause != "deepsleep" or self.wake != "timer":
            return
        if until - time.time() < 1:
            return
        log("back to sleep until", until)
        try:
            self.doze(until)
        except Exception as e:
            log("deep sleep failed, staying awake:", repr(e))

    def duty_done(self, now):
        # A duty-cycle node sleeps as soon as everything it holds is confirmed, else when its
        # awake time is up; but what it brought into this wake from before (tombstones, frames
        # on the card) goes out once first, after the settle time, which may be longer than
        # `awake`: a node that always slept before it would never send them.
        sp = self.spool
        if self.pending:
            return False
        if sp.empty():
            return True
        if time.ticks_diff(now, self.duty_sleep_at) < 0:
            return False
        if not sp.older(self.before):
            return True
        return self.settle_at is None and sp.next_due(now) < 0 and not sp.unsent()
