# The node's life: read config, join Wi-Fi, connect, capture on interval / command / motion,
# publish frames in chunks, answer commands, sleep when asked. Failures never end the loop:
# Wi-Fi or broker loss means reconnect with back-off; only a bad config stops the app (at the
# REPL, with a message), because retrying cannot fix it.
import gc
import json
import time

from espcam import VERSION, commands, config, frames, hw
from espcam.link import Link
from espcam.mqtt import TOO_BIG

STATE_EVERY_MS = 300000
BACKOFF_MAX_MS = 60000
DUTY_GIVE_UP_MS = 60000   # a duty-cycle node that cannot reach the broker goes back to sleep
PENDING_MAX = 16
DROPPED_MAX = 32          # dropped commands remembered, to be answered one by one
PIR_RECHECK_S = 5         # a PIR output still high when going to sleep: look again after this


def log(*args):
    print("espcam:", *args)


class Node:
    def __init__(self, cfg):
        self.cfg = cfg
        self.boot_ms = time.ticks_ms()
        self.reset_cause = hw.reset_cause()
        self.wake = hw.wake_reason() if self.reset_cause == "deepsleep" else "none"
        rtc = self._rtc_read()
        self.ids = frames.FrameIds(rtc)
        # Kept in RTC memory, so deep sleep and resets do not forget them: the time of the last
        # motion capture (time.time(), which runs on through deep sleep), whether the chip was
        # already reset once to revive the camera, and the end of a sleep interrupted by a nap.
        self.motion_at = rtc.get("mt")
        self.cam_reset = rtc.get("cr") is True
        self.until = rtc.get("until")
        self.link = Link(cfg, self._on_message)
        self.sender = frames.Sender(cfg["chunk_size"], self.link.topic("frame"))
        self.pending = []
        self.dropped = []
        self.dropped_more = 0
        self.frame = None
        self.why = None
        self.pulse_off_at = None
        self.next_interval = None
        self.next_state = 0
        self.next_ping = 0
        self.duty_sleep_at = None
        self.backoff = 1000
        self.sleep_until = None
        # What runs each command: commands.COMMANDS names them all, this maps each to its
        # cmd_<name> method, once (a command without a method stops the app here, at start-up).
        self.handlers = {}
        for name in commands.COMMANDS:
            self.handlers[name] = getattr(self, "cmd_" + name)

    # -------------------------------------------------------------- RTC memory

    def _rtc_read(self):
        raw = hw.rtc_load()
        if self.reset_cause not in ("deepsleep", "soft", "hard", "wdt") or not raw:
            return {}
        try:
            d = json.loads(raw)
            return d if isinstance(d, dict) else {}
        except ValueError:
            return {}

    def _rtc_write(self):
        d = {"fid": self.ids.last, "res": self.ids.reserved, "cap": self.ids.captured}
        if self.motion_at is not None:
            d["mt"] = self.motion_at
        if self.cam_reset:
            d["cr"] = True
        if self.until is not None:
            d["until"] = self.until
        hw.rtc_save(json.dumps(d))

    # -------------------------------------------------------------- messages in

    def _on_message(self, topic, msg):
        # Called by the MQTT client while it reads, possibly in the middle of our own publish:
        # only queue here.
        if len(self.pending) < PENDING_MAX:
            self.pending.append(msg)
        elif len(self.dropped) < DROPPED_MAX:
            self.dropped.append(commands.names(msg))   # answered later, each with its own id
        else:
            self.dropped_more += 1

    def _ack(self, cid, cmd, result=None, error=None, code=None):
        self.link.publish("ack", json.dumps(commands.ack(cid, cmd, result, error, code)), qos=1)

    def _handle(self, payload):
        try:
            if payload is TOO_BIG:
                raise commands.Refused("too_long",
                                       "command longer than %d bytes" % commands.MAX_BYTES)
            cid, cmd, args = commands.parse(payload)
        except commands.Refused as r:
            log("refused command:", r.msg)
            self._ack(r.cid, r.cmd, error=r.msg, code=r.rule)
            return
        try:
            self.handlers[cmd](cid, args)
        except commands.Refused as r:
            self._ack(cid, cmd, error=r.msg, code=r.rule)
        except Exception as e:
            # A command that broke (a full flash, the heap, the connection) still gets its ack,
            # unless the MQTT client was in the middle of a packet: then the loop closes the
            # connection.
            log("command", cmd, "failed:", repr(e))
            if self.link.mq.mid:
                raise
            if isinstance(e, MemoryError):
                self.frame = None
                gc.collect()
            self._ack(cid, cmd, error="%s failed: %r" % (cmd, e))

    # One method per command of commands.COMMANDS, given the id and the checked arguments.

    def cmd_capture(self, cid, args):
        fid = self.capture("command", cid)
        if fid is None:
            raise commands.Refused(None, self.why)
        self._ack(cid, "capture", {"frame": fid})

    def cmd_flash(self, cid, args):
        state = args["state"]
        hw.flash(state != "off")
        self.pulse_off_at = None
        if state == "pulse":
            self.pulse_off_at = time.ticks_add(time.ticks_ms(), args["ms"])
        self.publish_state()
        self._ack(cid, "flash", {"flash": "off" if state == "off" else "on"})

    def cmd_sleep(self, cid, args):
        seconds = args["seconds"]
        self._ack(cid, "sleep", {"sleep": seconds})
        self.sleep(seconds)

    def cmd_config(self, cid, args):
        # All or none: every value was checked by parse(); the new settings are saved first and
        # applied only once they are on flash, so a failed save changes nothing.
        changes = args["set"]
        cfg = self.cfg
        new = dict(cfg)
        for k in changes:
            new[k] = changes[k]
        try:
            config.save(new)
        except OSError as e:
            raise commands.Refused(None, "could not save settings: %r" % (e,))
        old_fs, old_q = cfg["frame_size"], cfg["quality"]
        for k in changes:
            cfg[k] = changes[k]
        if cfg["frame_size"] != old_fs or cfg["quality"] != old_q:
            self.frame = None   # the class driver's reconfigure invalidates the held buffer
            gc.collect()
            hw.camera_configure(cfg["frame_size"], cfg["quality"])
        if "interval" in changes:
            self._schedule_interval()
        self.publish_state()
        self._ack(cid, "config", {"settings": config.settings(cfg)})

    def cmd_reboot(self, cid, args):
        self._ack(cid, "reboot")
        self.link.publish("availability", b"offline", retain=True, qos=1)
        self.link.close(goodbye=True)
        self._rtc_write()
        hw.reset()

    def cmd_status(self, cid, args):
        self.publish_state()
        self._ack(cid, "status")

    def cmd_resend(self, cid, args):
        fid = args["frame"]
        chunks = args.get("chunks")
        f = self.frame
        if f is None or f.id != fid:
            raise commands.Refused(None, "frame %d is no longer held" % fid)
        count = (len(f.mv) + self.sender.chunk_size - 1) // self.sender.chunk_size
        if chunks is not None:
            for i in chunks:
                if i >= count:
                    raise commands.Refused(None, "frame %d has %d chunks" % (fid, count))
        n = self.sender.send(self.link.mq, f, chunks, hw.feed)
        self._ack(cid, "resend", {"frame": fid, "chunks": n})

    # -------------------------------------------------------------- frames out

    def capture(self, trigger, cid=None):
        cfg = self.cfg
        self.frame = None      # let the last frame go before the driver makes the next one
        gc.collect()
        lit = hw.flash_is_on()
        if cfg["flash_on_capture"] and not lit:
            hw.flash(True)
            time.sleep_ms(150)   # let the sensor's auto exposure see the light
        buf = hw.camera_capture(cfg["frame_size"], cfg["quality"])
        if cfg["flash_on_capture"] and not lit:
            hw.flash(False)
        if buf is None:
            self.why = "camera: " + hw.camera_error
            log("capture failed:", hw.camera_error)
            self.publish_state()
            return None
        if not self.sender.fits(len(buf)):
            self.why = "frame of %d bytes needs more than 65535 chunks of %d bytes" % (
                len(buf), self.sender.chunk_size)
            log("capture dropped:", self.why)
            return None
        try:
            meta, dropped = frames.meta_json(
                hw.unix_time(), time.ticks_diff(time.ticks_ms(), self.boot_ms), trigger,
                cfg["frame_size"], cfg["quality"], self.wake, cid)
        except ValueError as e:
            self.why = str(e)
            log("capture dropped:", self.why)
            return None
        if dropped:
            log("metadata too long: command id", cid, "left out of the frame")
        if trigger == "motion":
            self.motion_at = time.time()
        fid = self.ids.next()
        self._rtc_write()
        self.frame = frames.Frame(fid, buf, meta)
        self.send_frame()
        return fid

    def send_frame(self):
        f = self.frame
        self.sender.send(self.link.mq, f, None, hw.feed)
        f.delivered = True
        log("frame", f.id, len(f.mv), "bytes")

    # -------------------------------------------------------------- state out

    def state(self):
        cfg = self.cfg
        s = config.settings(cfg)
        s["motion"] = cfg["pir_pin"] is not None
        return {
            "proto": 1, "node": cfg["node_id"], "app": VERSION, "fw": hw.firmware(),
            "driver": hw.camera_driver(), "mac": hw.mac(), "ip": hw.wifi_ip(),
            "rssi": hw.wifi_rssi(), "heap_free": hw.heap_free(),
            "uptime": time.ticks_diff(time.ticks_ms(), self.boot_ms) / 1000,
            "time": hw.unix_time(), "reset_cause": self.reset_cause, "wake": self.wake,
            "frame": self.ids.shown(), "camera": hw.camera_error, "chunk_size": cfg["chunk_size"],
            "flash": "on" if hw.flash_is_on() else "off", "sleep_until": self.sleep_until,
            "settings": s,
        }

    def publish_state(self):
        gc.collect()
        self.link.publish("state", json.dumps(self.state()), retain=True, qos=1)
        self.next_state = time.ticks_add(time.ticks_ms(), STATE_EVERY_MS)

    # -------------------------------------------------------------- sleep

    def sleep(self, seconds):
        cfg = self.cfg
        end = time.time() + seconds
        now = hw.unix_time()
        self.sleep_until = now + seconds if now else None
        hw.flash(False)   # off for the sleep, so the state published now says off
        self.pulse_off_at = None
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

    def cooldown_left(self, now):
        if self.motion_at is None:
            return 0
        return min(self.motion_at + self.cfg["motion_cooldown"] - now,
                   self.cfg["motion_cooldown"])

    def doze(self, end, left=None):
        # Deep sleep until `end` (time.time() seconds). ext0 wakes on a level, so a PIR output
        # still high would wake the chip at once, and within the motion cooldown a PIR wake
        # would only be ignored: then sleep by timer until the PIR can be armed, and come back
        # to sleep out the rest with it armed (run() does that before anything else).
        pir = self.cfg["pir_pin"]
        if left is None:
            left = max(1, end - time.time())
        arm = None
        self.until = None
        if pir is not None:
            wait = self.cooldown_left(time.time())
            if hw.pir_high(pir):
                wait = max(wait, PIR_RECHECK_S)
            if wait <= 0:
                arm = pir
            elif wait < left:
                self.until = end
                left = wait
        self._rtc_write()
        hw.deepsleep(int(left * 1000), arm)

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

    # -------------------------------------------------------------- the loop

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
        # The connection's objects live as long as it does: collect first, so that they land at
        # the bottom of the heap instead of splitting the free space a frame needs.
        gc.collect()
        self.link.connect()
        log("connected to", cfg["broker"]["host"], "as", cfg["node_id"])
        self.backoff = 1000
        self.next_ping = time.ticks_add(time.ticks_ms(), cfg["keepalive"] * 500)
        self.publish_state()
        f = self.frame
        if f is not None and not f.delivered:
            self.send_frame()   # the link broke before the broker confirmed the whole frame

    def wait_backoff(self):
        log("retry in", self.backoff // 1000, "s")
        end = time.ticks_add(time.ticks_ms(), self.backoff)
        while time.ticks_diff(end, time.ticks_ms()) > 0:
            hw.feed()
            hw.idle()
            time.sleep_ms(100)
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_MS)

    def first_capture(self):
        # What this boot owes: a motion wake, a duty-cycle wake, or the first interval frame.
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
            wait = max(0, min(wait, time.ticks_diff(self.duty_sleep_at, time.ticks_ms())))
        self.link.wait(wait)
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
        if cfg["pir_pin"] is not None and hw.pir_take():
            if self.cooldown_left(time.time()) > 0:
                log("motion ignored: cooldown")
            else:
                self.capture("motion")
        if self.next_interval is not None and time.ticks_diff(now, self.next_interval) >= 0:
            self._schedule_interval()
            self.capture("interval")
        if time.ticks_diff(now, self.next_state) >= 0:
            self.publish_state()
        if cfg["keepalive"] and time.ticks_diff(now, self.next_ping) >= 0:
            self.link.ping()
            self.next_ping = time.ticks_add(now, cfg["keepalive"] * 500)
        if self.duty_sleep_at is not None and time.ticks_diff(now, self.duty_sleep_at) >= 0:
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

    def run(self):
        cfg = self.cfg
        log("app", VERSION, "node", cfg["node_id"], "reset", self.reset_cause, "wake", self.wake)
        hw.release_holds()
        self.rest()
        if cfg["watchdog"]:
            hw.watchdog_start(cfg["watchdog"] * 1000)
        if cfg["pir_pin"] is not None:
            hw.pir_start(cfg["pir_pin"])
        self.camera_start()
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
                    if cfg["sleep_interval"] and \
                            time.ticks_diff(time.ticks_ms(), started) > DUTY_GIVE_UP_MS:
                        self.sleep(cfg["sleep_interval"])
                    self.wait_backoff()
                    continue
                if owed is not None:
                    trigger, owed = owed, None
                    try:
                        self.capture(trigger)
                    except Exception as e:
                        log("link lost while sending:", repr(e))
                        self.link.close()
                        continue
                    if cfg["sleep_interval"]:
                        self.duty_sleep_at = time.ticks_add(time.ticks_ms(), cfg["awake"] * 1000)
            try:
                self.tick()
            except MemoryError:
                self.frame = None
                gc.collect()
                log("out of memory; dropped the held frame")
                if self.link.mq.mid:
                    self.link.close()   # the MQTT client was in the middle of a packet
            except Exception as e:
                log("link lost:", repr(e))
                self.link.close()
            hw.idle()


def default_node_id():
    try:
        m = hw.wlan().config("mac")
        return "cam-%02x%02x%02x" % (m[3], m[4], m[5])
    except Exception:
        return None


def main():
    try:
        cfg = config.load(default_node_id())
    except config.ConfigError as e:
        log("CONFIG ERROR:", e)
        log("the app is not running; fix config.json (docs/node.md) and reset the board")
        return
    Node(cfg).run()
