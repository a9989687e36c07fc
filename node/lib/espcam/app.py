# The node's life: read config, join Wi-Fi, connect, capture on interval / command / motion,
# publish frames in chunks, keep each in the spool until the backend confirms it, answer
# commands, sleep when asked. Failures never end the loop: Wi-Fi or broker loss means reconnect
# with back-off, capturing into the spool meanwhile; only a bad config stops the app (at the
# REPL, with a message), because retrying cannot fix it.
import gc
import json
import time

from espcam import VERSION, commands, config, frames, hw, protocol
from espcam.link import Link
from espcam.loop import STATE_EVERY_MS, Loop
from espcam.mqtt import TOO_BIG
from espcam.outbox import CONFIRMS_MAX, log

PENDING_MAX = 16
DROPPED_MAX = 32          # dropped commands remembered, to be answered one by one


class Node(Loop):
    def __init__(self, cfg):
        self.cfg = cfg
        self.boot_ms = time.ticks_ms()
        self.reset_cause = hw.reset_cause()
        self.wake = self._wake() if self.reset_cause == "deepsleep" else "none"
        self.woke_at = hw.unix_time()   # the press, for a button wake: the RTC kept the clock
        rtc = self._rtc_read()
        self.ids = frames.FrameIds(rtc)
        # Kept in RTC memory, so deep sleep and resets do not forget them: the time of the last
        # motion capture (time.time(), which runs on through deep sleep), whether the chip was
        # already reset once to revive the camera, and the end of a sleep interrupted by a nap.
        self.motion_at = rtc.get("mt")
        self.ring_at = rtc.get("rt")
        self.ring_held = None     # a ring not published yet (the doorbell topic's JSON)
        self.cam_reset = rtc.get("cr") is True
        self.until = rtc.get("until")
        # The RAM spool's tombstones and held ids, until the spool is made (run(): a nap back to
        # sleep never makes one, and must keep them).
        self.rtc_sp = rtc.get("sp")
        self.spool = None
        self.link = Link(cfg, self._on_message)
        self.confirm_topic = self.link.topic("confirm").encode()
        # Updates over MQTT (ota.py): the module is loaded only while there is an update to
        # fetch, to confirm or to report, so that every other boot keeps its heap.
        self.ota = None
        self.ota_offer = None
        self.ota_topics = (self.link.topic("ota/offer").encode(),
                           self.link.topic("ota/piece").encode())
        if self._ota_pending():
            try:
                self.ota_load()
            except MemoryError:
                log("update: no heap for ota.py; it waits for the next start")
        self.sender = frames.Sender(cfg["chunk_size"], self.link.topic("frame"))
        self.pending = []
        self.confirms = []
        self.confirms_lost = 0
        self.dropped = []
        self.dropped_more = 0
        self.why = None
        self.settle_at = None
        self.before = 0
        self.duty_owed = False
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

    def _wake(self):
        # The button sleeps on ext0, the PIR on ext0 alone or on ext1 beside a button
        # (hw.deepsleep): `pin` is the PIR, as before there was a button.
        w = hw.wake_reason()
        if w == "ext0":
            return "button" if self.cfg["button_pin"] is not None else "pin"
        if w == "ext1":
            return "pin"
        return w

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
        d = {"fid": self.ids.last, "res": self.ids.reserved, "cap": self.ids.captured,
             "boot": self.ids.boot}
        if self.motion_at is not None:
            d["mt"] = self.motion_at
        if self.ring_at is not None:
            d["rt"] = self.ring_at
        if self.cam_reset:
            d["cr"] = True
        if self.until is not None:
            d["until"] = self.until
        sp = self.spool
        if sp is not None:
            sp.changed = False
            if sp.kind == "ram":
                d["sp"] = sp.rtc()
        elif self.rtc_sp:
            d["sp"] = self.rtc_sp
        hw.rtc_save(json.dumps(d))

    # -------------------------------------------------------------- messages in

    def _on_message(self, topic, msg):
        # Called by the MQTT client while it reads, possibly in the middle of our own publish:
        # only queue here.
        if topic == self.confirm_topic:
            if len(self.confirms) < CONFIRMS_MAX:
                self.confirms.append(msg)
            else:
                self.confirms_lost += 1
            return
        if topic in self.ota_topics:
            if self.ota is not None:
                self.ota.take(topic, msg)
            elif topic == self.ota_topics[0] and msg:
                self.ota_offer = msg   # the main loop loads ota.py, not the middle of a read
            return
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
                self._shed()
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
            self.spool.before_camera(False)   # the class driver's reconfigure reuses its buffer
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
        f = self.spool.open(fid)
        if f is None:
            raise commands.Refused(None, "frame %d is no longer held" % fid)
        try:
            count = protocol.chunk_count(f.size, self.sender.chunk_size)
            if chunks is not None:
                for i in chunks:
                    if i >= count:
                        raise commands.Refused(None, "frame %d has %d chunks" % (fid, count))
            n = self.sender.send(self.link.mq, f, chunks, hw.feed, True)
        finally:
            self.spool.close(f)
        self._ack(cid, "resend", {"frame": fid, "chunks": n})

    # -------------------------------------------------------------- updates (ota.py)

    def _ota_pending(self):
        # Something of an update on flash: an app on trial or an outcome to report (ota.json),
        # a transfer to resume (next/), an offer that found no heap for ota.py (ota_early).
        try:
            with open("ota.json") as f:
                m = json.load(f)
            if m.get("trial") or m.get("report"):
                return True
        except (OSError, ValueError):
            pass
        import os
        for f in ("next/offer.json", "ota_early"):
            try:
                os.stat(f)
                return True
            except OSError:
                pass
        return False

    def ota_load(self):
        if self.ota is None:
            gc.collect()
            from espcam import ota
            self.ota = ota.Updater(self.cfg, self.link)
            # Loaded for an offer, after this connection's birth: nothing left to confirm.
            self.ota.born_done = self.link.up
        return self.ota

    def ota_step(self, now):
        if self.ota_offer is not None:
            offer, self.ota_offer = self.ota_offer, None
            try:
                self.ota_load().offered = offer
            except MemoryError as e:
                # ota.py compiled from source needs far more than its ~11 KB of bytecode, and
                # a heap that has run a while has it only in pieces: once, the node restarts
                # and loads it first thing (file ota_early), where the retained offer finds it.
                self.ota = None
                gc.collect()
                import os
                try:
                    os.remove("ota_early")
                except OSError:
                    log("update: no heap to load ota.py now; restarting to load it first")
                    open("ota_early", "w").close()
                    self.link.publish("availability", b"offline", retain=True, qos=1)
                    self.link.close(goodbye=True)
                    self._rtc_write()
                    hw.reset()
                log("update: no heap to load ota.py:", repr(e))
                self.link.publish("ack", json.dumps(commands.ack(
                    None, "update", error="no heap to load the updater (ota.py)",
                    code="no_heap")), qos=1)
                return
        o = self.ota
        if o is None:
            return
        o.step(now)
        if not o.busy() and o.born_done:
            # Done with it (an update failed, refused or skipped): the heap back for frames.
            self.ota = None
            import espcam
            import os
            import sys
            try:
                os.remove("ota_early")
            except OSError:
                pass
            sys.modules.pop("espcam.ota", None)
            try:
                del espcam.ota
            except AttributeError:
                pass
            gc.collect()

    def ota_busy(self):
        return self.ota_offer is not None or (self.ota is not None and self.ota.busy())

    # -------------------------------------------------------------- state out

    def state(self):
        cfg = self.cfg
        s = config.settings(cfg)
        s["motion"] = cfg["pir_pin"] is not None
        s["button"] = cfg["button_pin"] is not None
        return {
            "proto": protocol.PROTO, "node": cfg["node_id"], "app": VERSION, "fw": hw.firmware(),
            "driver": hw.camera_driver(), "mac": hw.mac(), "ip": hw.wifi_ip(),
            "rssi": hw.wifi_rssi(), "heap_free": hw.heap_free(),
            "uptime": time.ticks_diff(time.ticks_ms(), self.boot_ms) / 1000,
            "time": hw.unix_time(), "reset_cause": self.reset_cause, "wake": self.wake,
            "frame": self.ids.shown(), "camera": hw.camera_error, "chunk_size": cfg["chunk_size"],
            "flash": "on" if hw.flash_is_on() else "off", "sleep_until": self.sleep_until,
            "settings": s, "spool": self.spool.state() if self.spool is not None else None,
            "boot": self.ids.boot,
        }

    def publish_state(self):
        if not self.link.up:
            return   # a capture failing while offline: the next connect publishes the state
        gc.collect()
        self.link.publish("state", json.dumps(self.state()), retain=True, qos=1)
        self.next_state = time.ticks_add(time.ticks_ms(), STATE_EVERY_MS)


def default_node_id():
    try:
        m = hw.wlan().config("mac")
        return "cam-%02x%02x%02x" % (m[3], m[4], m[5])
    except Exception:
        return None


def main():
    try:
        cfg = config.load(default_node_id())
        node = Node(cfg)   # a broker.ca the firmware cannot use is found here (secure.py)
    except config.ConfigError as e:
        log("CONFIG ERROR:", e)
        log("the app is not running; fix config.json (docs/node.md) and reset the board")
        return
    node.run()
