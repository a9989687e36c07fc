# The spool (docs/protocol.md, "Confirmation and the spool"): every frame the node captured and
# the backend has not confirmed yet, sent again until a `confirm` names it, and tombstones of the
# frames the node could no longer keep, said on `dropped` until a `confirm` names them too.
# RamSpool holds the frames' buffers on the heap; sdspool.SdSpool holds each frame as a file on
# the microSD card, which outlives the node's own power cut (a module of its own, imported only
# by a node configured for it: its bytecode would take heap on every other node). Both keep
# their index as parallel lists of small ints (a few bytes a frame).
import gc
import json
import time

from espcam import protocol
from espcam.mqtt import TOO_BIG

# Why a frame was dropped, as said on `dropped` (protocol.json dropped.reasons, plus RESET: a
# reset empties RAM as deep sleep does, and what the node held then is said, not lost silently).
REASONS = ("spool full", "not confirmed before deep sleep", "power lost while saving it",
           "larger than the spool", "node reset before it was confirmed")
FULL = 0
SLEEP = 1
POWER = 2
LARGER = 3
RESET = 4

MAX_IDS = 64           # ids in one confirm and in one dropped (protocol.json max_ids)
MAX_BYTES = 1024       # a confirm document (protocol.json confirm.max_bytes)
MAX_REASON = 128
CONFIRM_LISTS = ("stored", "lost")
RETRY_MAX_MS = 600000  # the longest wait between two sends of an unconfirmed frame
TOMB_RUNS = 64         # runs of consecutive tombstone ids held; past it the oldest is forgotten
RTC_RUNS = 32          # runs of ids RTC memory keeps across deep sleep and resets (2 KB in all)
# Heap a RAM spool leaves free beyond the next frame: the largest things the app allocates
# between frames (a 1 KB command and its parse, the state document, a confirm of 64 ids, the
# JSON of a dropped message) with room for the fragments they leave.
HEAP_RESERVE = 24576


def parse_confirm(payload):
    # (stored, lost) of a confirm document, or ValueError("<rule>: why"), the rule the first of
    # protocol.json's refusals.confirm broken, in its order (the backend names the same).
    if payload is TOO_BIG or len(payload) > MAX_BYTES:
        raise ValueError("not_json: confirm longer than %d bytes" % MAX_BYTES)
    try:
        d = json.loads(payload)
    except (ValueError, UnicodeError):
        raise ValueError("not_json: confirm is not JSON")
    if not isinstance(d, dict):
        raise ValueError("not_object: confirm is not a JSON object")
    out = []
    for name in CONFIRM_LISTS:
        ids = d.get(name, [])
        if not isinstance(ids, list):
            raise ValueError("bad_list: %s is not a list" % name)
        for i in ids:
            if type(i) is not int or not 0 <= i <= protocol.MAX_FRAME_ID:
                raise ValueError("bad_list: %s holds something other than a frame id" % name)
        out.append(ids)
    if len(out[0]) + len(out[1]) > MAX_IDS:
        raise ValueError("too_many: more than %d frame ids" % MAX_IDS)
    return out[0], out[1]


def dropped_doc(ids, reason):
    return json.dumps({"frames": ids, "reason": reason})


class Spool:
    # What both kinds share: the index of held frames (oldest first: ids only grow), their send
    # schedule, and the tombstones, as runs [first, last, reason, sent] of consecutive ids
    # (frames dropped one after the other, the usual case, cost one run however many), `sent`
    # being the last id of the run published since the last round began.
    kind = None

    def __init__(self, budget, timeout_s, log):
        self.budget = budget
        self.timeout = timeout_s * 1000
        self.log = log
        self.ids = []
        self.sizes = []
        self.due = []          # ticks_ms at which a frame is sent again
        self.tries = []        # sends so far; 0: never sent
        self.held = 0
        self.tombs = []
        self.tomb_due = None   # ticks_ms of the next round of every tombstone
        self.tomb_tries = 0
        self.changed = False   # the ids held changed since the owner last saved them

    # ------------------------------------------------------------------ reading it

    def empty(self):
        return not self.ids and not self.tombs

    def dropped(self):
        n = 0
        for r in self.tombs:
            n += r[1] - r[0] + 1
        return n

    def state(self):
        return {"kind": self.kind, "frames": len(self.ids), "bytes": self.held,
                "budget": self.budget, "dropped": self.dropped()}

    def find(self, fid):
        ids = self.ids
        for i in range(len(ids)):
            if ids[i] == fid:
                return i
        return -1

    # ------------------------------------------------------------------ the schedule

    def retry_ms(self, tries):
        # The wait after the tries-th send: the timeout, doubled after each send, at most 10 min.
        ms = self.timeout << (tries - 1 if tries < 16 else 15)
        return RETRY_MAX_MS if ms > RETRY_MAX_MS else ms

    def sent(self, fid, now):
        i = self.find(fid)
        if i >= 0:
            t = self.tries[i] + 1
            self.tries[i] = t
            self.due[i] = time.ticks_add(now, self.retry_ms(t))

    def all_due(self, now):
        # After a new connection: every frame and tombstone goes out again.
        for i in range(len(self.due)):
            self.due[i] = now
        if self.tombs:
            self.tomb_due = now

    def next_due(self, now):
        # The oldest frame whose time to be sent again has come, or -1.
        due = self.due
        for i in range(len(due)):
            if time.ticks_diff(now, due[i]) >= 0:
                return i
        return -1

    # ------------------------------------------------------------------ tombstones

    def tomb(self, fid, reason):
        self.log("frame", fid, "dropped:", REASONS[reason])
        for r in self.tombs:
            if r[2] == reason and r[1] == fid - 1:
                r[1] = fid
                self._tombs_changed()
                return
        self.tombs.append([fid, fid, reason, fid - 1])
        if len(self.tombs) > TOMB_RUNS:
            r = self.tombs.pop(0)
            self.log("LOST track of frames %d to %d (%s): more than %d runs of tombstones"
                     % (r[0], r[1], REASONS[r[2]], TOMB_RUNS))
        if self.tomb_due is None:
            # The new ids go out at once (unsent); the round of all of them after the timeout.
            self.tomb_due = time.ticks_add(time.ticks_ms(), self.retry_ms(1))
            self.tomb_tries = 1
        self._tombs_changed()

    def restore(self, first, last, reason):
        # A run of tombstones read back (RTC memory, the card), to be published again.
        if not 0 <= reason < len(REASONS):
            reason = FULL
        self.tombs.append([first, last, reason, first - 1])
        if self.tomb_due is None:
            self.tomb_due = time.ticks_ms()
            self.tomb_tries = 0

    def tomb_round(self, now):
        # True if it is time to publish every tombstone again (then all are marked unsent).
        if self.tomb_due is None or time.ticks_diff(now, self.tomb_due) < 0:
            return False
        for r in self.tombs:
            r[3] = r[0] - 1
        self.tomb_tries += 1
        self.tomb_due = time.ticks_add(now, self.retry_ms(self.tomb_tries))
        return True

    def dropped_batch(self):
        # (reason, ids, marks): up to MAX_IDS unpublished ids of one reason, oldest runs first;
        # dropped_sent(marks) once they are published. (None, None, None) when nothing is left.
        reason = None
        ids = None
        marks = None
        for r in self.tombs:
            if r[3] >= r[1] or (reason is not None and r[2] != reason):
                continue
            if reason is None:
                reason = r[2]
                ids = []
                marks = []
            i = r[3] + 1
            while i <= r[1] and len(ids) < MAX_IDS:
                ids.append(i)
                i += 1
            marks.append((r, i - 1))
            if len(ids) >= MAX_IDS:
                break
        return reason, ids, marks

    def older(self, fid):
        # Whether it holds a frame or tombstone of an id up to fid.
        if self.ids and self.ids[0] <= fid:
            return True
        for r in self.tombs:
            if r[0] <= fid:
                return True
        return False

    def unsent(self):
        # Tombstone ids not published since the last round began.
        for r in self.tombs:
            if r[3] < r[1]:
                return True
        return False

    def dropped_sent(self, marks):
        for r, last in marks:
            if r[3] < last:
                r[3] = last

    def _untomb(self, fid):
        tombs = self.tombs
        for k in range(len(tombs)):
            r = tombs[k]
            if r[0] <= fid <= r[1]:
                if r[0] == r[1]:
                    tombs.pop(k)
                elif fid == r[0]:
                    r[0] = fid + 1
                    if r[3] < fid:
                        r[3] = fid
                elif fid == r[1]:
                    r[1] = fid - 1
                    if r[3] > fid - 1:
                        r[3] = fid - 1
                else:
                    tombs.insert(k + 1, [fid + 1, r[1], r[2], r[3] if r[3] > fid else fid])
                    r[1] = fid - 1
                    if r[3] > fid - 1:
                        r[3] = fid - 1
                return True
        return False

    def _tombs_changed(self):
        self.changed = True

    # ------------------------------------------------------------------ frames leaving

    def confirm(self, ids):
        # Forgets every listed id held, frame or tombstone; returns how many it held.
        n = 0
        tombs = False
        for fid in ids:
            i = self.find(fid)
            if i >= 0:
                self._remove(i)
                n += 1
            elif self._untomb(fid):
                tombs = True
                n += 1
        if tombs:
            if not self.tombs:
                self.tomb_due = None
                self.tomb_tries = 0
            self._tombs_changed()
        return n

    def lose(self, fid, reason=FULL):
        i = self.find(fid)
        if i >= 0:
            self._remove(i)
            self.tomb(fid, reason)

    def drop_oldest(self, reason=FULL):
        if not self.ids:
            return False
        fid = self.ids[0]
        self._remove(0)
        self.tomb(fid, reason)
        return True

    def _append(self, fid, size, tries):
        self.ids.append(fid)
        self.sizes.append(size)
        self.due.append(time.ticks_ms())
        self.tries.append(tries)
        self.held += size
        self.changed = True

    def _remove(self, i):
        self.held -= self.sizes[i]
        self.ids.pop(i)
        self.sizes.pop(i)
        self.due.pop(i)
        self.tries.pop(i)
        self.changed = True

    def _make_room(self, size, count_max):
        # Drops the oldest frames until `size` more bytes fit the budget; False if the frame is
        # larger than the whole budget (it is then not held).
        if size > self.budget:
            return False
        while self.ids and (self.held + size > self.budget or len(self.ids) >= count_max):
            self.drop_oldest(FULL)
        return True

    # What each kind adds: add(frame), open(fid) and close(frame) around a send of a held
    # frame, before_camera(on_heap), sleeping().

    def close(self, frame):
        pass

    def before_camera(self, on_heap):
        pass

    def sleeping(self):
        pass


class RamSpool(Spool):
    # Frames held as the camera driver gave them: the module driver's bytes as they are; the
    # class driver's memoryview into its own frame buffer, which its next capture overwrites,
    # only until the camera is used again (before_camera copies it then, if it is still held:
    # a frame confirmed before the next capture, the usual case, is never copied).
    kind = "ram"

    def __init__(self, budget, timeout_s, log, rtc=None, reset=None, spare=gc.mem_free):
        Spool.__init__(self, budget, timeout_s, log)
        self.spare = spare    # bytes the heap can still give (hw.heap_spare)
        self.frames = []      # the Frame objects, parallel to ids
        self.expect = 0       # the size the next frame is expected to have
        self.rtc_full = False
        if rtc:
            # Tombstones kept across a deep sleep or a reset, and the frames held when the
            # node was reset (not deep sleep: those became tombstones before it).
            for r in rtc.get("tb") or ():
                self.restore(r[0], r[1], r[2])
            why = SLEEP if reset == "deepsleep" else RESET
            for r in rtc.get("hd") or ():
                self.log("frames %d to %d dropped: %s" % (r[0], r[1], REASONS[why]))
                self.restore(r[0], r[1], why)

    def add(self, frame):
        # Holds the frame (dropping the oldest ones for room); False if it is larger than the
        # whole budget and is not held.
        size = frame.size
        self.expect = size if size > self.expect else self.expect - self.expect // 8
        if not self._make_room(size, 1 << 30):
            self.tomb(frame.id, LARGER)
            return False
        self.frames.append(frame)
        self._append(frame.id, size, 0)
        return True

    def _remove(self, i):
        self.frames.pop(i)
        Spool._remove(self, i)

    def open(self, fid):
        i = self.find(fid)
        return self.frames[i] if i >= 0 else None

    def _heap_room(self, n, keep=None):
        # Drops the oldest frames (not keep) until the heap has n bytes in one piece and the
        # reserve besides. A frame needs one block: a heap in pieces can have room in total and
        # no room for it, and MicroPython does not say how large its largest free block is, so
        # a block of that size is asked for and given back. Nothing to drop, nothing to check
        # (the usual case: every frame confirmed before the next capture), which spares a board
        # with megabytes of heap two collections per frame.
        while True:
            i = 1 if self.frames and self.frames[0] is keep else 0
            if i >= len(self.frames):
                return True
            gc.collect()
            if self.spare() >= n + HEAP_RESERVE:
                try:
                    b = bytearray(n)
                except MemoryError:
                    b = None
                if b is not None:
                    b = None
                    gc.collect()
                    return True
            fid = self.ids[i]
            self._remove(i)
            self.tomb(fid, FULL)

    def before_camera(self, on_heap):
        # Called before every use of the camera (capture, reconfigure, deinit). on_heap: the
        # driver allocates the next frame on the heap (the module driver), so room is made for
        # it here, from the size of recent frames: the node must not run out of heap because
        # of what it holds.
        for i in range(len(self.frames)):
            f = self.frames[i]
            if f.view:
                self._heap_room(f.size, f)
                gc.collect()
                b = None
                if self.spare() >= f.size + HEAP_RESERVE:
                    try:
                        b = bytes(f.mv)
                    except MemoryError:
                        b = None
                if b is None:
                    self._remove(i)
                    self.tomb(f.id, LARGER)
                else:
                    f.hold(b)
                break
        if on_heap:
            self._heap_room(self.expect + self.expect // 4)

    def sleeping(self):
        # Deep sleep empties RAM: what is still held becomes a tombstone, kept in RTC memory.
        while self.ids:
            self.drop_oldest(SLEEP)

    def rtc(self):
        # {"tb": tombstone runs [first, last, reason], "hd": runs of held ids}, RTC_RUNS in all,
        # tombstones first; what does not fit is left out (and said once).
        tb = []
        for r in self.tombs:
            if len(tb) < RTC_RUNS:
                tb.append([r[0], r[1], r[2]])
        hd = []
        n = len(tb)
        for fid in self.ids:
            if hd and hd[-1][1] == fid - 1:
                hd[-1][1] = fid
            elif n < RTC_RUNS:
                hd.append([fid, fid])
                n += 1
            else:
                break
        full = len(tb) < len(self.tombs) or sum(r[1] - r[0] + 1 for r in hd) < len(self.ids)
        if full and not self.rtc_full:
            self.log("RTC memory keeps %d runs of frame ids: the rest would be lost by a "
                     "reset or deep sleep" % RTC_RUNS)
        self.rtc_full = full
        return {"tb": tb, "hd": hd}
