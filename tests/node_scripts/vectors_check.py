# Runs ON MicroPython: the node's own protocol, command and ack code against the shared vectors
# (argv: the vectors folder). Prints one line per case, "ok <file> <name>" or
# "FAIL <file> <name>: <why>", then "done".
import binascii
import json
import sys

from espcam import commands, frames, protocol, receiver, spool
from mqttsink import MessageSink

folder = sys.argv[1]


def load(name):
    with open(folder + "/" + name) as f:
        return json.loads(f.read())


def report(kind, name, why):
    print(("FAIL %s %s: %s" % (kind, name, why)) if why else ("ok %s %s" % (kind, name)))


doc = load("chunks.json")
for case in doc["valid"]:
    name = case["name"]
    if case.get("version", protocol.PROTO) != protocol.PROTO:
        # An older node's chunks: the node does not make them, a receiver reads them.
        why = None
        try:
            for h in case["chunks_hex"]:
                receiver.unpack_header(binascii.unhexlify(h))
        except ValueError as e:
            why = "refused: %s" % e
        report("chunks", name, why)
        continue
    frame = binascii.unhexlify(case["frame_hex"])
    mb = case["meta_json"].encode() if case["meta_json"] else b""
    fr = frames.Frame(case["frame_id"], frame, mb)
    s = frames.Sender(case["chunk_size"], "espcam/t/frame")
    link = MessageSink()
    only = None
    if case["flags"] & protocol.FLAG_RESEND:
        only = list(range(len(case["chunks_hex"])))
    s.send(link, fr, only)
    want = [binascii.unhexlify(h) for h in case["chunks_hex"]]
    got = [m for m, q in link.msgs]
    why = None
    if fr.crc != case["crc32"]:
        why = "crc %d" % fr.crc
    elif got != want:
        why = "%d chunks, expected %d" % (len(got), len(want))
        for i in range(min(len(got), len(want))):
            if got[i] != want[i]:
                why = "chunk %d differs" % i
                break
    elif [q for m, q in link.msgs][-1] != 1 or sum(q for m, q in link.msgs) != 1:
        why = "only the last chunk must be QoS 1"
    else:
        for c in want:
            try:
                meta = receiver.unpack_header(c)[8]
                if meta is not None and meta != case["meta"]:
                    why = "metadata read back as %r" % (meta,)
            except ValueError as e:
                why = "decode " + str(e)
    report("chunks", name, why)

for case in doc["invalid"]:
    try:
        receiver.unpack_header(binascii.unhexlify(case["chunk_hex"]))
        why = "accepted"
    except ValueError as e:
        r = receiver.rule(e)
        why = None if r == case["rule"] else "refused for %s (%s), not %s" % (r, e, case["rule"])
    report("chunks", case["name"], why)

doc = load("commands.json")
for case in doc["valid"]:
    try:
        got = commands.parse(case["payload"].encode())
        want = (case["id"], case["cmd"], case["args"])
        why = None if got == want else "parsed as %r" % (got,)
    except commands.Refused as r:
        why = "refused: %s (%s)" % (r.rule, r.msg)
    report("commands", case["name"], why)

for case in doc["invalid"]:
    try:
        commands.parse(case["payload"].encode())
        why = "accepted"
    except commands.Refused as r:
        ack = commands.ack(r.cid, r.cmd, error=r.msg, code=r.rule)
        why = None
        if r.rule != case["rule"]:
            why = "refused for %s (%s), not %s" % (r.rule, r.msg, case["rule"])
        elif not isinstance(ack.get("error"), str) or not ack["error"] or "result" in ack:
            why = "ack without an error text: %r" % (ack,)
        elif json.loads(json.dumps(ack)) != ack:
            why = "ack does not survive JSON: %r" % (ack,)
        else:
            for k in case["ack"]:
                if ack.get(k, "absent") != case["ack"][k]:
                    why = "ack %s is %r, not %r" % (k, ack.get(k, "absent"), case["ack"][k])
    report("commands", case["name"], why)

# The node writes acks and never reads them: the ack document it builds from each valid
# vector's fields must be that vector (the invalid ones are a receiver's refusals).
doc = load("acks.json")
for case in doc["valid"]:
    want = json.loads(case["payload"])
    if not isinstance(want["id"], str) and want["id"] is not None:
        continue   # a node echoes ids that are strings, else null: no ack of its looks like this
    ack = commands.ack(want["id"], want["cmd"], want.get("result"), want.get("error"),
                       want.get("code"))
    why = None if json.loads(json.dumps(ack)) == want else "built %r" % (ack,)
    report("acks", case["name"], why)

# confirm documents are the node's to read: every valid one to its stored and lost ids, every
# invalid one refused for its rule.
doc = load("confirm.json")
for case in doc["confirm"]["valid"]:
    try:
        got = spool.parse_confirm(case["payload"].encode())
        why = None if got == (case["stored"], case["lost"]) else "read as %r" % (got,)
    except ValueError as e:
        why = "refused: %s" % e
    report("confirm", case["name"], why)
for case in doc["confirm"]["invalid"]:
    try:
        spool.parse_confirm(case["payload"].encode())
        why = "accepted"
    except ValueError as e:
        r = receiver.rule(e)
        why = None if r == case["rule"] else "refused for %s (%s), not %s" % (r, e, case["rule"])
    report("confirm", case["name"], why)

# dropped documents are the node's to write: the one it builds from each valid vector's frames
# and reason is that vector, and reads back by the rules the invalid ones break.
for case in doc["dropped"]["valid"]:
    built = spool.dropped_doc(case["frames"], case["reason"])
    why = None
    if json.loads(built) != json.loads(case["payload"]):
        why = "built %s" % built
    else:
        try:
            if receiver.parse_dropped(built) != (case["frames"], case["reason"]):
                why = "read back differently"
        except ValueError as e:
            why = "refused: %s" % e
    report("dropped", case["name"], why)
for case in doc["dropped"]["invalid"]:
    try:
        receiver.parse_dropped(case["payload"].encode())
        why = "accepted"
    except ValueError as e:
        r = receiver.rule(e)
        why = None if r == case["rule"] else "refused for %s (%s), not %s" % (r, e, case["rule"])
    report("dropped", case["name"], why)

# Every reason the node gives fits a dropped document, with the most ids of the most digits:
# every message the node publishes for its tombstones is valid.
for i in range(len(spool.REASONS)):
    ids = list(range(protocol.MAX_FRAME_ID - spool.MAX_IDS + 1, protocol.MAX_FRAME_ID + 1))
    try:
        receiver.parse_dropped(spool.dropped_doc(ids, spool.REASONS[i]).encode())
        why = None
    except ValueError as e:
        why = "refused: %s" % e
    report("dropped", "reason %d" % i, why)
print("done")
