# Updates over MQTT (docs/protocol.md, "Updates"; docs/deploy.md, "Over the air"). The backend
# offers an update with a small signed offer; the node checks the signature with its own key,
# then pulls the manifest and each file in windows of pieces, appending each piece to its file
# under next/ as it arrives, so no file is ever whole in RAM and a power cut loses at most a
# window (the sizes on flash say where to go on). When every file is in, each is hashed again
# from flash; then next/ becomes an app slot, ota.json (written last, by rename) points boot.py
# at it, and the chip resets. The new app confirms itself with its birth; boot.py and main.py
# roll back to the previous slot when it does not (node/boot.py).
import gc
import hashlib
import json
import os
import struct
import time

from binascii import hexlify, unhexlify

from espcam import VERSION, commands, hw
from espcam.otaslot import NEXT, SLOTS, makedirs, read_mark, rmtree, rollback, size_of, write_mark
from espcam.outbox import log

PIECE = ">2sBBIHI"     # magic b"EU", version 1, reserved 0, tag, file index, offset
PIECE_LEN = 14
WINDOW = 8192          # bytes asked for at once: a few pieces in flight, no more
RETRY_MS = 5000        # a window without its next piece for this long is asked for again
DEADLINE = 300         # seconds a new app has to reach the broker, unless the offer says


def hmac_sha256(key, msg):
    # RFC 2104 over hashlib.sha256: MicroPython has no hmac module.
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    h = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    h.update(msg)
    inner = h.digest()
    h = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    h.update(inner)
    return h.digest()


def same(a, b):
    # Compares without stopping at the first difference, so timing tells nothing of the MAC.
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


class Refused(Exception):
    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code
        self.msg = msg


class Updater:
    def __init__(self, cfg, link):
        k = cfg.get("ota_key")
        self.key = None
        if isinstance(k, str) and k:
            try:
                self.key = unhexlify(k)
            except ValueError:
                pass
        self.node = cfg["node_id"]
        self.link = link
        self.offer_topic = link.topic("ota/offer").encode()
        self.piece_topic = link.topic("ota/piece").encode()
        self.offered = None
        self.job = None        # {"id", "tag", "ver", "files": [[path, size, sha256 hex], ...]}
        self.fi = 0            # the file being fetched, 0 the manifest
        self.have = 0          # its bytes on flash
        self.f = None
        self.end = 0           # the end of the window asked for
        self.asked = None      # when, or None: nothing asked
        self.pct = -1
        self.error = None      # a failure in the MQTT callback, reported from step()
        self.boot_ms = time.ticks_ms()
        m = read_mark()
        self.trial = bool(m.get("trial"))
        self.deadline = m.get("deadline") or DEADLINE
        self.born_done = False
        self._resume()

    # ------------------------------------------------------------------ messages in

    def take(self, topic, msg):
        # Called from the MQTT callback: pieces go to flash at once (nothing queued in RAM), an
        # offer waits for step(). True if the message was ours.
        if topic == self.piece_topic:
            try:
                self._piece(msg)
            except OSError as e:
                self.error = "writing to flash failed: %r" % (e,)
            return True
        if topic == self.offer_topic:
            self.offered = msg
            return True
        return False

    def _piece(self, msg):
        job = self.job
        if job is None or self.f is None or len(msg) <= PIECE_LEN:
            return
        magic, ver, _, tag, fi, off = struct.unpack_from(PIECE, msg, 0)
        if magic != b"EU" or ver != 1 or tag != job["tag"] or fi != self.fi or off != self.have:
            return   # a piece of another update, or one already written: asked for again
        n = len(msg) - PIECE_LEN
        if self.have + n > job["files"][fi][1]:
            self.error = "piece beyond the end of %s" % job["files"][fi][0]
            return
        self.f.write(memoryview(msg)[PIECE_LEN:])
        self.have += n
        if self.have == job["files"][fi][1]:
            self.f.close()
            self.f = None

    # ------------------------------------------------------------------ the offer

    def _check_offer(self, payload):
        # The offer, or Refused: the signature first, before anything else of it is believed.
        if self.key is None:
            raise Refused("no_key", "this node has no ota_key in config.json: provision it "
                                    "(espcam provision) and deploy over USB once")
        try:
            outer = json.loads(payload)
            text = outer["offer"]
            sig = outer.get("sig")
        except (ValueError, TypeError, KeyError):
            raise Refused("bad_offer", "offer is not {\"offer\": ..., \"sig\": ...}")
        if not isinstance(text, str):
            raise Refused("bad_offer", "offer must be a string")
        if not isinstance(sig, str) or not sig:
            raise Refused("no_signature", "offer is not signed")
        try:
            sig = unhexlify(sig)
        except ValueError:
            raise Refused("bad_signature", "signature is not hex")
        if not same(sig, hmac_sha256(self.key, text.encode())):
            raise Refused("bad_signature", "signature does not match this node's key")
        try:
            o = json.loads(text)
            ok = o["node"] == self.node and isinstance(o["id"], str) and \
                isinstance(o["version"], str) and type(o["size"]) is int and \
                len(unhexlify(o["sha256"])) == 32
        except (ValueError, TypeError, KeyError):
            ok = False
        if not ok:
            raise Refused("bad_offer", "offer lacks node, id, version, size or sha256")
        return o

    def _offer(self, payload):
        try:
            o = self._check_offer(payload)
        except Refused as r:
            log("update refused:", r.msg)
            try:   # the id it claims, so that the refusal can be matched to the update
                uid = json.loads(json.loads(payload)["offer"])["id"]
                uid = uid[:64] if isinstance(uid, str) else None
            except Exception:
                uid = None
            self._ack(uid, False, r.msg, r.code)
            return
        m = read_mark()
        if o["id"] in (m.get("id"), m.get("failed")) or (self.job and self.job["id"] == o["id"]):
            return   # the retained offer again: done, failed or under way
        log("update", o["id"], "to", o["version"], "accepted")
        self._close()
        rmtree(NEXT)
        makedirs(NEXT)
        with open(NEXT + "/offer.json", "w") as f:
            f.write(payload)
        self._start(o)
        self._ack(o["id"], True)

    def _ack(self, uid, ok, error=None, code=None):
        result = {"version": self.job["ver"]} if ok else None
        self.link.publish("ack", json.dumps(commands.ack(uid, "update", result, error, code)),
                          qos=1)

    def _start(self, o):
        self.job = {"id": o["id"], "tag": struct.unpack(">I", unhexlify(o["sha256"])[:4])[0],
                    "ver": o["version"], "files": [["manifest.json", o["size"], o["sha256"]]],
                    "deadline": o.get("deadline") or DEADLINE}
        self.fi = 0
        self.asked = None
        self.pct = -1
        self._seek()

    def _resume(self):
        # After a reset or a wake: an update half fetched goes on from what is on flash. Its
        # offer was checked when it came; next/ is the node's own.
        try:
            with open(NEXT + "/offer.json") as f:
                o = json.loads(json.loads(f.read())["offer"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        try:
            self._start(o)
        except Exception as e:   # a manifest gone bad on flash: start again when offered
            log("update", o["id"], "cannot resume:", repr(e))
            self._close()
            self.job = None
            rmtree(NEXT)
            return
        log("update", o["id"], "resumed at file", self.fi, "byte", self.have)

    def _manifest(self):
        # The manifest is in and its hash matched the signed offer: its files join the job.
        with open(NEXT + "/manifest.json") as f:
            man = json.load(f)
        files = man["files"]
        for p, size, sha in files:
            if not isinstance(p, str) or not p.startswith("lib/") or ".." in p or \
                    type(size) is not int or size < 0 or len(sha) != 64:
                raise Refused("bad_manifest", "manifest names %r" % (p,))
        self.job["files"] += files
        self.job["summary"] = man.get("summary")
        man = None
        gc.collect()

    def _seek(self):
        # The first file not whole on flash; opens it to append.
        job = self.job
        files = job["files"]
        while True:
            if self.fi == 1 and len(files) == 1:
                self._verify(0)
                self._manifest()
            if self.fi >= len(files):
                self.have = 0
                return
            path, size = files[self.fi][0], files[self.fi][1]
            full = NEXT + "/" + path
            have = size_of(full)
            if have > size:
                os.remove(full)
                have = -1
            if have == size:
                self.fi += 1
                continue
            if have < 0:
                makedirs(full.rsplit("/", 1)[0])
                open(full, "wb").close()
                if size == 0:
                    self.fi += 1
                    continue
                have = 0
            self.f = open(full, "ab")
            self.have = have
            return

    def _verify(self, i):
        path, size, sha = self.job["files"][i]
        h = hashlib.sha256()
        buf = bytearray(512)
        mv = memoryview(buf)
        n = 0
        with open(NEXT + "/" + path, "rb") as f:
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                h.update(mv[:k])
                n += k
                hw.feed()
        if n != size or hexlify(h.digest()).decode() != sha:
            raise Refused("corrupt", "%s: sha256 differs from the manifest" % path
                          if i else "manifest: sha256 differs from the signed offer")

    # ------------------------------------------------------------------ the main loop's part

    def busy(self):
        return self.job is not None

    def step(self, now):
        # One pass while connected: an offer, a window to ask for, the end of the transfer.
        if self.offered is not None:
            p, self.offered = self.offered, None
            if p:
                self._offer(p)
        job = self.job
        if job is None:
            return
        try:
            if self.error:
                raise Refused("write_failed", self.error)
            if self.f is None:
                self.fi += 1
                try:
                    self._seek()
                except OSError as e:
                    raise Refused("write_failed", "flash: %r" % (e,))
                self.asked = None
            if self.fi >= len(job["files"]):
                self._install()
                return
            if self.asked is None or self.have >= self.end or \
                    time.ticks_diff(now, self.asked) > RETRY_MS:
                self._ask(now)
        except Refused as r:
            self._fail(r.code, r.msg)

    def _ask(self, now):
        job = self.job
        size = job["files"][self.fi][1]
        n = min(WINDOW, size - self.have)
        self.end = self.have + n
        self.asked = now
        self.link.publish("ota/get", json.dumps({"id": job["id"], "file": self.fi,
                                                 "offset": self.have, "len": n}))
        self._progress()

    def _progress(self):
        job = self.job
        files = job["files"]
        total = 0
        done = 0
        for i in range(1, len(files)):
            total += files[i][1]
            if i < self.fi:
                done += files[i][1]
            elif i == self.fi:
                done += self.have
        pct = done * 100 // total if total else 0
        if pct >= self.pct + 10 or self.pct < 0:
            self.pct = pct
            gc.collect()   # heap_free: what the transfer leaves the app, without garbage
            self.status({"id": job["id"], "state": "downloading", "version": job["ver"],
                         "progress": pct, "heap_free": gc.mem_free()})

    def status(self, d):
        d["installed"] = VERSION
        self.link.publish("ota/status", json.dumps(d), retain=True, qos=1)

    def _close(self):
        if self.f is not None:
            self.f.close()
            self.f = None

    def _fail(self, code, msg):
        job = self.job
        log("update", job["id"], "failed:", msg)
        self._close()
        self.job = None
        rmtree(NEXT)
        m = read_mark()
        m["failed"] = job["id"]
        write_mark(m)
        self.status({"id": job["id"], "state": "failed", "version": job["ver"], "error": msg,
                     "code": code})

    def _install(self):
        job = self.job
        self.status({"id": job["id"], "state": "verifying", "version": job["ver"],
                     "progress": 100})
        try:
            for i in range(len(job["files"])):
                self._verify(i)
            m = read_mark()
            cur = m.get("app")
            target = SLOTS[1] if cur == SLOTS[0] else SLOTS[0]
            rmtree(target)
            os.rename(NEXT, target)
            # The switch: until this rename the old app is the one boot.py runs.
            write_mark({"app": target, "ver": job["ver"], "id": job["id"], "prev": cur,
                        "prev_ver": m.get("ver") or VERSION, "trial": True, "boots": 0,
                        "deadline": job["deadline"], "failed": m.get("failed")})
        except OSError as e:
            raise Refused("write_failed", "flash: %r" % (e,))
        log("update", job["id"], "installed in", target, "; restarting into", job["ver"])
        try:
            self.status({"id": job["id"], "state": "restarting", "version": job["ver"],
                         "progress": 100})
            self.link.publish("availability", b"offline", retain=True, qos=1)
            self.link.close(goodbye=True)
        except Exception:
            pass   # switched already: the new app reports how it went
        hw.reset()

    def born(self):
        # After the birth (online and the state published): a new app on trial has made it.
        # Then whatever outcome is still to be told goes out.
        self.asked = None   # a window asked for on the last connection is lost with it
        if self.born_done:
            return
        m = read_mark()
        if m.get("trial"):
            m["trial"] = False
            m["boots"] = 0
            m["report"] = {"id": m.get("id"), "state": "done", "version": m.get("ver")}
            write_mark(m)
            self.trial = False
            log("update", m.get("id"), "confirmed: running", VERSION)
        r = m.get("report")
        if r:
            self.status(r)
            m["report"] = None
            write_mark(m)
        self.born_done = True

    def overdue(self, now):
        # A new app that has not reached the broker in its time goes back to the one before.
        if self.trial and time.ticks_diff(now, self.boot_ms) > self.deadline * 1000:
            why = "no birth within %d s" % self.deadline
            log("update: " + why + "; rolling back")
            rollback(read_mark(), why)
            hw.reset()
