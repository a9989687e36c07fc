# Runs ON MicroPython: the node's own tables against backend/protocol.json (argv: its path), the
# one machine-readable statement of the protocol. Prints "ok <what>" or "FAIL <what>: <node's>
# != <protocol.json's>" per item, then "done".
import json
import struct
import sys

from espcam import commands, config, frames, mqtt, protocol, receiver, spool

with open(sys.argv[1]) as f:
    spec = json.loads(f.read())


def plain(v):
    # The node's tuples as JSON's lists, so that tables compare whole.
    if isinstance(v, (tuple, list)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        d = {}
        for k in v:
            d[k] = plain(v[k])
        return d
    return v


def same(what, node, want):
    node = plain(node)
    if node == want:
        print("ok", what)
    else:
        print("FAIL %s: %r != %r" % (what, node, want))


chunk = spec["chunk"]
same("protocol version", protocol.PROTO, spec["protocol"])
same("versions read", protocol.ACCEPTS, spec["accepts"])
fmt = ">" if chunk["byte_order"] == "big" else "<"
for field in chunk["header"]:
    fmt += field[1]
same("chunk header format", protocol.HEADER, fmt)
same("chunk header length", [protocol.HEADER_LEN, struct.calcsize(protocol.HEADER)],
     [chunk["header_len"], chunk["header_len"]])
same("magic", protocol.MAGIC, chunk["magic"].encode())
same("flags", {"meta": protocol.FLAG_META, "resent": protocol.FLAG_RESEND}, chunk["flags"])
same("total_len range", (protocol.MIN_FRAME, protocol.MAX_FRAME), chunk["total_len"])
same("chunk_size range", (protocol.MIN_CHUNK, protocol.MAX_CHUNK), chunk["chunk_size"])
same("default chunk_size", config.DEFAULTS["chunk_size"], chunk["default_chunk_size"])
same("count max", protocol.MAX_COUNT, chunk["count_max"])
same("frame_id max", protocol.MAX_FRAME_ID, chunk["frame_id_max"])
same("frame_id block", frames.ID_BLOCK, chunk["frame_id_block"])
meta = json.loads(frames.meta_json(1.5, 1, "command", "VGA", 80, "none", "c1")[0])
same("metadata keys", sorted(meta), sorted(chunk["meta_keys"]))

names = spec["names"]
same("node id", {"first": protocol._ID_FIRST, "rest": protocol._ID_REST,
                 "max_len": protocol.NODE_ID_MAX},
     {"first": names["node_id"]["first"], "rest": names["node_id"]["rest"],
      "max_len": names["node_id"]["max_len"]})
same("default prefix", config.DEFAULTS["prefix"], names["default_prefix"])

cmds = spec["commands"]
same("command max bytes", (commands.MAX_BYTES, mqtt.MAX_MSG), [cmds["max_bytes"]] * 2)
same("command id length", {"min_len": commands.ID_MIN, "max_len": commands.ID_MAX}, cmds["id"])
same("command names", sorted(commands.COMMANDS), sorted(cmds["names"]))
for name in commands.COMMANDS:
    args = commands.COMMANDS[name]
    d = {}
    for arg, a in args:
        d[arg] = a
    same("command %s" % name, d, cmds["names"].get(name))
    order = [arg for arg, a in args]
    for arg, a in args:
        if "only_if" in a and order.index(a["only_if"][0]) > order.index(arg):
            print("FAIL command %s: %s is checked before %s, which it depends on"
                  % (name, arg, a["only_if"][0]))

same("setting names", sorted(config.SETTINGS), sorted(spec["settings"]))
for name in config.SETTINGS:
    same("setting %s" % name, config.SETTINGS[name], spec["settings"].get(name))

# Version 2: the spool's topics, documents and limits.
topics = spec["topics"]
same("topic dropped", {"from": "node", "qos": protocol.DROPPED_QOS, "retain": False},
     {"from": topics["dropped"]["from"], "qos": topics["dropped"]["qos"],
      "retain": topics["dropped"]["retain"]})
same("topic confirm", {"from": "backend", "qos": protocol.CONFIRM_QOS},
     {"from": topics["confirm"]["from"], "qos": topics["confirm"]["qos"]})
conf = spec["confirm"]
same("confirm", {"lists": spool.CONFIRM_LISTS, "max_ids": spool.MAX_IDS,
                 "max_bytes": spool.MAX_BYTES},
     {"lists": conf["lists"], "max_ids": conf["max_ids"], "max_bytes": conf["max_bytes"]})
drop = spec["dropped"]
same("dropped", {"max_ids": [spool.MAX_IDS, receiver.MAX_DROPPED_IDS],
                 "max_reason": [spool.MAX_REASON, receiver.MAX_DROPPED_REASON],
                 "max_bytes": receiver.MAX_DROPPED_BYTES},
     {"max_ids": [drop["max_ids"]] * 2, "max_reason": [drop["max_reason"]] * 2,
      "max_bytes": drop["max_bytes"]})
# The reasons protocol.json names are the node's, in its order; the node may give more.
same("dropped reasons", spool.REASONS[:len(drop["reasons"])], drop["reasons"])
for r in spool.REASONS[len(drop["reasons"]):]:
    print("extra dropped reason:", r)
same("spool kinds", sorted(config.SPOOL_BYTES), sorted(spec["state"]["spool_kinds"]))

# The doorbell: the node's `ring` on its topic (which the backend publishes on too).
same("topic doorbell", {"qos": protocol.DOORBELL_QOS, "retain": False},
     {"qos": topics["doorbell"]["qos"], "retain": topics["doorbell"]["retain"]})
ring = protocol.ring(1.5, 7)
bell = spec["doorbell"]
same("ring", {"keys": sorted(ring), "event_type": ring["event_type"], "listed": True},
     {"keys": sorted(bell["ring"]["keys"]), "event_type": bell["ring"]["keys"]["event_type"],
      "listed": ring["event_type"] in bell["event_types"]})
same("ring size", len(json.dumps(protocol.ring(2 ** 31 + 0.5, protocol.MAX_FRAME_ID))) <= bell[
    "max_bytes"], True)
same("button trigger and wake", ["button" in chunk["triggers"], "button" in spec["state"]["wakes"]],
     [True, True])
print("done")
