# The SD card spool (docs/node.md, "The spool"): one file per frame, written before its first
# chunk is sent, so a frame outlives the node's own power cut. Imported only by a node whose
# config says "spool": "sd".
import json
import os
import struct

from espcam.spool import FULL, LARGER, POWER, Spool

SD_MAX_FRAMES = 512    # frames an SD spool indexes (about 16 bytes of heap each)
SD_HEAD = ">4sBBIIIH"  # magic, version, flags, frame id, JPEG bytes, CRC32, metadata bytes
SD_HEAD_LEN = 20
SD_MAGIC = b"ECsp"


class FileFrame:
    # A frame on the card, as the Sender takes it: each chunk is read into `chunk` (one buffer,
    # made once by the spool) from fh at base + offset.
    def __init__(self, fid, fh, base, size, crc, meta, chunk):
        self.id = fid
        self.fh = fh
        self.base = base
        self.size = size
        self.crc = crc
        self.meta = meta
        self.chunk = chunk
        self.mv = None


def _mkdirs(path):
    p = ""
    for part in path.split("/"):
        if not part:
            continue
        p += "/" + part if path[0] == "/" or p else part
        try:
            os.mkdir(p)
        except OSError:
            pass


class SdSpool(Spool):
    # One file per frame, <dir>/<id in 8 hex digits>.frm: a 20-byte head (SD_HEAD), the
    # metadata, the JPEG. Written as .tmp and renamed, so a power cut leaves the whole frame or
    # a .tmp, which the next boot turns into a tombstone. Tombstones live on the card too
    # (tombs.json). Frames are sent from their file through one chunk-size buffer, never read
    # whole into RAM.
    kind = "sd"

    def __init__(self, folder, budget, timeout_s, chunk_size, log):
        Spool.__init__(self, budget, timeout_s, log)
        self.dir = folder
        self.chunk = bytearray(chunk_size)
        _mkdirs(folder)
        self._load_tombs()
        self._scan()
        try:
            st = os.statvfs(folder)
            room = self.held + st[1] * st[4] - (1 << 20)   # keep 1 MB of the card free
            if room < self.budget:
                self.log("spool: the card has room for %d bytes, not %d" % (room, budget))
                self.budget = room if room > 0 else 0
        except (OSError, AttributeError):
            pass

    def _path(self, fid, ext):
        return "%s/%08x.%s" % (self.dir, fid, ext)

    def _load_tombs(self):
        # tombs.json, or the tombs.tmp a power cut left while it was replaced (FAT replaces a
        # file by removing it first).
        for name in ("tombs.json", "tombs.tmp"):
            try:
                with open(self.dir + "/" + name) as f:
                    runs = json.loads(f.read())
            except (OSError, ValueError):
                continue
            for r in runs:
                self.restore(r[0], r[1], r[2])
            return

    def _tombs_changed(self):
        runs = []
        for r in self.tombs:
            runs.append([r[0], r[1], r[2]])
        tmp = self.dir + "/tombs.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(runs))
            os.rename(tmp, self.dir + "/tombs.json")
        except OSError as e:
            self.log("spool: could not save tombstones on the card:", repr(e))

    def _scan(self):
        found = []
        lost = []
        for ent in os.ilistdir(self.dir):
            name = ent[0]
            if len(name) != 12 or name[8] != ".":
                continue
            try:
                fid = int(name[:8], 16)
            except ValueError:
                continue
            ext = name[9:]
            if ext == "tmp":
                lost.append(fid)
            elif ext == "frm":
                size = self._size(fid)
                if size is None:
                    lost.append(fid)
                else:
                    found.append((fid, size))
        found.sort()
        lost.sort()
        for fid in lost:
            for ext in ("tmp", "frm"):
                try:
                    os.remove(self._path(fid, ext))
                except OSError:
                    pass
            self.tomb(fid, POWER)
        for fid, size in found:
            # It may have been sent before the boot: sent again as resent, after the connect.
            self._append(fid, size, 1)

    def _size(self, fid):
        # The JPEG size a frame file says, if the file is whole.
        try:
            p = self._path(fid, "frm")
            with open(p, "rb") as f:
                head = f.read(SD_HEAD_LEN)
            magic, ver, _, hfid, size, _, mlen = struct.unpack(SD_HEAD, head)
            if magic != SD_MAGIC or hfid != fid or os.stat(p)[6] != SD_HEAD_LEN + mlen + size:
                return None
            return size
        except (OSError, ValueError):
            return None

    def add(self, frame):
        # Writes the frame to the card before its first chunk is sent; False if it is not held
        # (larger than the budget, or the card refused it).
        fid = frame.id
        size = frame.size
        if not self._make_room(size, SD_MAX_FRAMES):
            self.tomb(fid, LARGER)
            return False
        tmp = self._path(fid, "tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(struct.pack(SD_HEAD, SD_MAGIC, 1, 0, fid, size, frame.crc,
                                    len(frame.meta)))
                f.write(frame.meta)
                f.write(frame.mv)
            os.rename(tmp, self._path(fid, "frm"))
        except OSError as e:
            self.log("spool: could not save frame", fid, "on the card:", repr(e))
            try:
                os.remove(tmp)
            except OSError:
                pass
            self.tomb(fid, FULL)
            return False
        self._append(fid, size, 0)
        return True

    def _remove(self, i):
        try:
            os.remove(self._path(self.ids[i], "frm"))
        except OSError:
            pass
        Spool._remove(self, i)

    def open(self, fid):
        i = self.find(fid)
        if i < 0:
            return None
        try:
            fh = open(self._path(fid, "frm"), "rb")
        except OSError as e:
            self.log("spool: frame", fid, "is gone from the card:", repr(e))
            self._remove(i)
            self.tomb(fid, FULL)
            return None
        try:
            magic, ver, _, hfid, size, crc, mlen = struct.unpack(SD_HEAD, fh.read(SD_HEAD_LEN))
            meta = fh.read(mlen) if mlen else b""
        except (OSError, ValueError):
            fh.close()
            self.log("spool: frame", fid, "is unreadable on the card")
            self._remove(i)
            self.tomb(fid, FULL)
            return None
        return FileFrame(fid, fh, SD_HEAD_LEN + mlen, size, crc, meta, self.chunk)

    def close(self, frame):
        if frame is not None and frame.fh is not None:
            frame.fh.close()
