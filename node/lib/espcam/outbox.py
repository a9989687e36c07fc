# The node's frames on their way out (docs/protocol.md, "Confirmation and the spool"): capture
# into the spool, send at once, send again what goes unconfirmed, say what was dropped, forget
# what the backend confirms. A part of app.Node (a base class), in a module of its own so that
# a board running .py files compiles the app in pieces (docs/node.md, "Memory").
import gc
import json
import time

from espcam import config, frames, hw, protocol, spool

CONFIRMS_MAX = 16         # confirm documents waiting; one lost costs a resend, then a confirm
DROPPED_BURST = 4         # dropped messages per pass of the loop, so commands are not kept waiting
# A button contact bounces for a few ms; edges closer together than this are one press. Shorter
# than any press a hand makes, and the ring waits for it at most once.
DEBOUNCE_MS = 50


def log(*args):
    print("espcam:", *args)


class Outbox:
    def start_spool(self):
        # The SD spool needs its card mounted; without a card the node holds frames in RAM, and
        # its state document says so ("kind": "ram").
        cfg = self.cfg
        budget = config.spool_budget(cfg)
        if cfg["spool"] == "sd":
            d = cfg["spool_dir"]
            try:
                if d == hw.SD_PATH or d.startswith(hw.SD_PATH + "/"):
                    hw.sd_mount()
                from espcam import sdspool
                self.spool = sdspool.SdSpool(d, budget, cfg["confirm_timeout"],
                                             cfg["chunk_size"], log)
                return
            except OSError as e:
                log("spool: no SD card (%r): holding frames in RAM" % (e,))
                budget = config.SPOOL_BYTES["ram"]
        self.spool = spool.RamSpool(budget, cfg["confirm_timeout"], log, self.rtc_sp,
                                    self.reset_cause, hw.heap_spare)
        self.rtc_sp = None
        self._rtc_write()

    def _captures_due(self, now):
        cfg = self.cfg
        if cfg["button_pin"] is not None and hw.button_take(DEBOUNCE_MS):
            self.ring()
        if cfg["pir_pin"] is not None and hw.pir_take():
            if self.cooldown_left(time.time()) > 0:
                log("motion ignored: cooldown")
            else:
                self.capture("motion")
        if self.next_interval is not None and time.ticks_diff(now, self.next_interval) >= 0:
            self._schedule_interval()
            self.capture("interval")

    def ring(self, at=None):
        # A press of the doorbell button: the `ring` goes out at once, before the camera is
        # even touched, so that a chime does not wait for the picture; then the frame it names
        # (trigger `button`). Without a connection the ring waits for the next one (connect()
        # publishes it before anything is sent again), with the time of the press. at: that
        # time, when the press was earlier than now (a button wake). Returns the frame id.
        now = time.time()
        if self.ring_left(now) > 0:
            log("ring ignored: within ring_cooldown of the last one")
            return None
        self.ring_at = now
        fid = self.ids.next()
        self._rtc_write()   # the id is given out now: never again, even if the capture fails
        doc = json.dumps(protocol.ring(hw.unix_time() if at is None else at, fid))
        self.ring_held = doc
        if self.link.up:
            try:
                self.publish_ring()
            except Exception as e:
                log("link lost while ringing:", repr(e))
                self.link.close()
        log("ring, frame", fid)
        self.capture("button", None, fid)
        return fid

    def publish_ring(self):
        if self.ring_held is not None:
            self.link.publish("doorbell", self.ring_held, qos=protocol.DOORBELL_QOS)
            self.ring_held = None

    def capture(self, trigger, cid=None, fid=None):
        # Captures one frame into the spool and, if the link is up, sends it at once. Returns
        # its id, or None (self.why says why). fid: the id already given to this frame (a
        # ring names it before the capture); a capture that fails leaves it unused.
        cfg = self.cfg
        self.spool.before_camera(hw.camera_frames_on_heap())
        gc.collect()
        lit = hw.flash_is_on()
        flash = cfg["flash_on_capture"] and not lit
        if flash:
            hw.flash(True)
            time.sleep_ms(150)   # let the sensor's auto exposure see the light
        try:
            buf = self._grab()
        finally:
            if flash:
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
        if fid is None:
            fid = self.ids.next()
        frame = frames.Frame(fid, buf, meta)
        buf = None
        self.spool.add(frame)
        self._rtc_write()
        if self.link.up:
            self.sender.send(self.link.mq, frame, None, hw.feed)
            self.spool.sent(fid, time.ticks_ms())
            log("frame", fid, frame.size, "bytes")
        else:
            log("frame", fid, frame.size, "bytes, held until the broker is back")
        return fid

    def _grab(self):
        # The module driver copies the frame onto the heap: if there is no room for it, the
        # oldest frames held in RAM make way (before_camera leaves room for a frame of the usual
        # size; this is for one larger, or a heap in pieces). With nothing left to drop it is a
        # failed capture, as any other (the camera's error says why), not a broken link.
        cfg = self.cfg
        while True:
            try:
                return hw.camera_capture(cfg["frame_size"], cfg["quality"])
            except MemoryError as e:
                if self.spool.kind == "ram" and self.spool.drop_oldest():
                    log("no room on the heap for the frame: dropped the oldest frame held")
                    gc.collect()
                    continue
                hw.camera_error = "capture: %r" % (e,)
                return None

    def _resend(self, now):
        # What the spool owes the backend: after a new connection (once the settle time has let
        # the session's queued confirms in) everything, then whatever has gone unconfirmed for
        # its time. Tombstones first (a few messages at most per pass), then one frame per pass,
        # so that commands and confirms get in between.
        sp = self.spool
        if self.settle_at is not None:
            if time.ticks_diff(now, self.settle_at) < 0:
                return
            self.settle_at = None
            sp.all_due(now)
        sp.tomb_round(now)
        for _ in range(DROPPED_BURST):
            reason, ids, marks = sp.dropped_batch()
            if reason is None:
                break
            self.link.publish("dropped", spool.dropped_doc(ids, spool.REASONS[reason]),
                              qos=protocol.DROPPED_QOS)
            sp.dropped_sent(marks)
        i = sp.next_due(now)
        if i < 0:
            return
        fid = sp.ids[i]
        resent = sp.tries[i] > 0
        f = sp.open(fid)
        if f is None:
            return
        try:
            self.sender.send(self.link.mq, f, None, hw.feed, resent)
        except Exception as e:
            if self.link.mq.mid:
                raise   # the link broke in the middle of a chunk
            log("frame", fid, "could not be read from the spool:", repr(e))
            sp.lose(fid)
            return
        finally:
            sp.close(f)
        sp.sent(fid, time.ticks_ms())
        log("frame", fid, f.size, "bytes sent again" if resent else "bytes")

    def _confirmations(self):
        while self.confirms:
            payload = self.confirms.pop(0)
            if not payload:
                continue   # the backend clearing its retained confirm (it forgot the node)
            try:
                stored, lost = spool.parse_confirm(payload)
            except ValueError as e:
                log("confirm ignored:", e)
                continue
            self.spool.confirm(stored)
            self.spool.confirm(lost)
        if self.confirms_lost:
            log(self.confirms_lost, "confirms arrived while", CONFIRMS_MAX, "waited: their "
                "frames are sent again and confirmed again")
            self.confirms_lost = 0

    def _shed(self):
        # Out of memory: the oldest frame held in RAM goes first (its tombstone says so).
        sp = self.spool
        if sp is not None and sp.kind == "ram" and sp.drop_oldest():
            log("out of memory: dropped the oldest frame held")
        gc.collect()
