# Runs ON MicroPython: chunk frames of many sizes with the node's Sender, deliver the chunks in
# a shuffled order with duplicates, reassemble from the headers alone, compare the bytes.
import binascii
import random
import sys

from espcam import frames, protocol, receiver
from mqttsink import MessageSink


def shuffle(lst):
    for i in range(len(lst) - 1, 0, -1):
        j = random.getrandbits(20) % (i + 1)
        lst[i], lst[j] = lst[j], lst[i]


random.seed(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
sizes = (1, 2, 255, 256, 257, 4095, 4096, 4097, 60000, 200003, 1048576)
for n in sizes:
    frame = bytearray(n)
    for i in range(0, n, 97):
        frame[i] = (i * 7 + n) & 0xFF
    cs = 4096 if n > 300 else 256
    link = MessageSink()
    frames.Sender(cs, "espcam/t/frame").send(link, frames.Frame(n, frame, b'{"trigger":"boot"}'))
    msgs = [m for m, q in link.msgs]
    msgs.append(msgs[0])           # a duplicate, as after a resend
    shuffle(msgs)
    out = None
    seen = set()
    for m in msgs:
        flags, fid, total, crc, csize, index, count, mlen, meta = receiver.unpack_header(m)
        if out is None:
            out = bytearray(total)
        if index in seen:
            continue
        seen.add(index)
        start = index * csize
        out[start:start + len(m) - protocol.HEADER_LEN - mlen] = m[protocol.HEADER_LEN + mlen:]
    ok = len(seen) == count and out == frame and binascii.crc32(out) & 0xFFFFFFFF == crc
    print(("ok %d bytes in %d chunks" if ok else "FAIL %d bytes in %d chunks") % (n, count))
    frame = out = msgs = link = None
print("done")
