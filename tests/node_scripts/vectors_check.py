# Runs ON MicroPython: the node's own protocol and chunking code against the shared vectors.
# Prints one line per case, "ok <name>" or "FAIL <name>: <why>", then "done".
import binascii
import json
import sys

from espcam import frames, protocol
from mqttsink import PacketLink


path = sys.argv[1]
with open(path) as f:
    doc = json.loads(f.read())

for case in doc["valid"]:
    name = case["name"]
    frame = binascii.unhexlify(case["frame_hex"])
    mb = case["meta_json"].encode() if case["meta_json"] else b""
    fr = frames.Frame(case["frame_id"], frame, mb)
    s = frames.Sender(case["chunk_size"], "espcam/t/frame")
    link = PacketLink()
    only = None
    if case["flags"] & protocol.FLAG_RESEND:
        only = list(range(len(case["chunks_hex"])))
    s.send(link, fr, only)
    want = [binascii.unhexlify(h) for h in case["chunks_hex"]]
    got = [m for m, q in link.msgs]
    if fr.crc != case["crc32"]:
        print("FAIL", name + ": crc", fr.crc)
    elif got != want:
        for i in range(min(len(got), len(want))):
            if got[i] != want[i]:
                print("FAIL", name + ": chunk", i, "differs")
                break
        else:
            print("FAIL", name + ": %d chunks, expected %d" % (len(got), len(want)))
    elif [q for m, q in link.msgs][-1] != 1 or sum(q for m, q in link.msgs) != 1:
        print("FAIL", name + ": only the last chunk must be QoS 1")
    else:
        bad = None
        for c in want:
            try:
                protocol.unpack_header(c)
            except ValueError as e:
                bad = str(e)
        print("FAIL " + name + ": decode " + bad if bad else "ok " + name)

for case in doc["invalid"]:
    try:
        protocol.unpack_header(binascii.unhexlify(case["chunk_hex"]))
        print("FAIL", case["name"] + ": accepted")
    except ValueError as e:
        print("ok", case["name"], "->", e)
print("done")
