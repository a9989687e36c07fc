# The node's life: read config, join Wi-Fi, connect, capture on interval / command / motion,
# publish frames in chunks, answer commands, sleep when asked. Failures never end the loop:
# Wi-Fi or broker loss means reconnect with back-off; only a bad config stops the app (at the
# REPL, with a message), because retrying cannot fix it.
import gc
import json
import time

from espcam import VERSION, commands, config, frames, hw
from espcam.link import TOO_BIG, Link

STATE_EVERY_MS = 300000
BACKOFF_MAX_MS = 60000
DUTY_GIVE_UP_MS = 60000   # a duty-cycle node that cannot reach the broker goes back to sleep
PENDING_MAX = 16


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
        self.link = Link(cfg, self._on_message)
        self.sender = frames.Sender(cfg["chunk_size"], self.link.topic("frame"))
        self.pending = []
        self.dropped = 0
        self.frame = None
        self.pulse_off_at = None
        self.next_interval = None
        self.last_motion = None
        self.next_state = 0
        self.next_ping = 0
        self.duty_sleep_at = None
        self.backoff = 1000
        self.sleep_until = None

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
        hw.rtc_save(json.dumps({"fid": self.ids.last, "res": self.ids.reserved}))

    # -------------------------------------------------------------- messages in

    def _on_message(self, topic, msg):
        # Called from inside umqtt, possibly in the middle of our own publish: only queue here.
        if len(self.pending) >= PENDING_MAX:
            self.dropped += 1
            return
        self.pending.append(msg)

    def _ack(self, cid, cmd, ok, result=None, error=None):
        d = {"id": cid, "cmd": cmd, "ok": ok}
        if ok:
            d["result"] = result if result is not None else {}
        else:
            d["error"] = error
        self.link.publish("ack", json.dumps(d), qos=1)

    def _handle(self, payload):
        try:
            if payload is TOO_BIG:
                raise commands.Refused("command longer than 1024 bytes")
            cid, cmd, arg = commands.parse(payload)
        except commands.Refused as r:
            log("refused command:", r.msg)
            self._ack(r.cid, r.cmd, False, error=r.msg)
            return
        try:
            getattr(self, "cmd_" + cmd)(cid, arg)
        except commands.Refused as r:
            self._ack(cid, cmd, False, error=r.msg)

    def cmd_capture(self, cid, arg):
        fid = self.capture("command", cid)
        if fid is None:
            raise commands.Refused("camera: " + hw.camera_error)
        self._ack(cid, "capture", True, {"frame": fid})

    def cmd_flash(self, cid, arg):
        state, ms = arg
        hw.flash(state != "off")
        self.pulse_off_at = time.ticks_add(time.ticks_ms(), ms) if state == "pulse" else None
        self._ack(cid, "flash", True, {"flash": "off" if state == "off" else "on"})

    def cmd_sleep(self, cid, seconds):
        self._ack(cid, "sleep", True, {"sleep": seconds})
        self.sleep(seconds)

    def cmd_config(self, cid, changes):
        cfg = self.cfg
        old_fs, old_q = cfg["frame_size"], cfg["quality"]
        for k in changes:
            cfg[k] = changes[k]
        try:
            config.save(cfg)
        except OSError as e:
            raise commands.Refused("could not save settings: %r" % (e,))
        if cfg["frame_size"] != old_fs or cfg["quality"] != old_q:
            self.frame = None   # the class driver's reconfigure invalidates the held buffer
            gc.collect()
            hw.camera_configure(cfg["frame_size"], cfg["quality"])
        if "interval" in changes:
            self._schedule_interval()
        self.publish_state()
        self._ack(cid, "config", True, {"settings": config.settings(cfg)})

    def cmd_reboot(self, cid, arg):
        self._ack(cid, "reboot", True)
        self.link.publish("availability", b"offline", retain=True, qos=1)
        self.link.close(goodbye=True)
        self._rtc_write()
        hw.reset()

    def cmd_status(self, cid, arg):
        self.publish_state()
        self._ack(cid, "status", True)

    def cmd_resend(self, cid, arg):
        fid, chunks = arg
        f = self.frame
        if f is None or f.id != fid:
            raise commands.Refused("frame %d is no longer held" % fid)
        count = (len(f.mv) + self.sender.chunk_size - 1) // self.sender.chunk_size
        if chunks is not None:
            for i in chunks:
                if i >= count:
                    raise commands.Refused("frame %d has %d chunks" % (fid, count))
        n = self.sender.send(self.link, f, chunks, hw.feed)
        self._ack(cid, "resend", True, {"frame": fid, "chunks": n})

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
            log("capture failed:", hw.camera_error)
            self.publish_state()
            return None
        fid = self.ids.next()
        self._rtc_write()
        meta = frames.meta_json(hw.unix_time(), time.ticks_diff(time.ticks_ms(), self.boot_ms),
                                trigger, cfg["frame_size"], cfg["quality"], self.wake, cid)
        self.frame = frames.Frame(fid, buf, meta)
        self.send_frame()
        return fid

    def send_frame(self):
        f = self.frame
        self.sender.send(self.link, f, None, hw.feed)
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
            "frame": self.ids.last, "camera": hw.camera_error, "chunk_size": cfg["chunk_size"],
            "sleep_until": self.sleep_until, "settings": s,
        }

    def publish_state(self):
        gc.collect()
        self.link.publish("state", json.dumps(self.state()), retain=True, qos=1)
        self.next_state = time.ticks_add(time.ticks_ms(), STATE_EVERY_MS)

    # -------------------------------------------------------------- sleep

    def sleep(self, seconds):
        now = hw.unix_time()
        self.sleep_until = now + seconds if now else None
        if self.link.up:
            try:
                self.publish_state()
                self.link.publish("availability", b"sleeping", retain=True, qos=1)
                self.link.close(goodbye=True)
            except Exception as e:
                # Sleep all the same: a duty-cycle node must not drain its battery retrying.
                log("could not say goodbye:", repr(e))
                self.link.close()
        self._rtc_write()
        log("deep sleep for", seconds, "s")
        hw.deepsleep(seconds * 1000, self.cfg["pir_pin"])

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
        if self.dropped:
            n, self.dropped = self.dropped, 0
            self._ack(None, None, False, error="%d commands dropped: node busy" % n)
        now = time.ticks_ms()
        if self.pulse_off_at is not None and time.ticks_diff(now, self.pulse_off_at) >= 0:
            hw.flash(False)
            self.pulse_off_at = None
        if cfg["pir_pin"] is not None and hw.pir_take():
            cool = cfg["motion_cooldown"] * 1000
            if self.last_motion is None or time.ticks_diff(now, self.last_motion) >= cool:
                self.last_motion = now
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

    def run(self):
        cfg = self.cfg
        log("app", VERSION, "node", cfg["node_id"], "reset", self.reset_cause, "wake", self.wake)
        hw.release_holds()
        if cfg["watchdog"]:
            hw.watchdog_start(cfg["watchdog"] * 1000)
        if cfg["pir_pin"] is not None:
            hw.pir_start(cfg["pir_pin"])
        hw.camera_init(cfg["frame_size"], cfg["quality"])
        owed = self.first_capture()
        self._schedule_interval()
        started = time.ticks_ms()
        while True:
            hw.feed()
            if not self.link.up:
                try:
                    self.connect()
                except Exception as e:   # OSError, MQTTException, umqtt's asserts
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
