# Commands (docs/protocol.md, "Commands"): the one table of them, reading them, and the ack
# document. parse() turns a payload into a checked (id, cmd, args) or raises Refused carrying
# whatever id and cmd could be read and the rule broken, so every message on the command topic
# gets exactly one ack, with a reason a person can act on and a code a program can.
import json

from espcam import config, protocol

MAX_BYTES = 1024
ID_MIN = 1
ID_MAX = 64

# Every command and its arguments, in protocol.json's terms (tests/test_node_protocol.py checks
# the two agree). The names here are the only list of commands: app.Node runs each one with its
# cmd_<name> method. Arguments are checked in the order given: `only_if` names an earlier one.
# 14 days of sleep at most: the broker forgets a session (and the commands queued for it) after
# persistent_client_expiration 14d, and machine.deepsleep() takes at most 2**31 - 1 ms (24.8 d).
COMMANDS = {
    "capture": (),
    "flash": (
        ("state", {"type": "choice", "choices": ("on", "off", "pulse"), "required": True}),
        ("ms", {"type": "int", "range": (1, 5000), "default": 200, "only_if": ("state", "pulse")}),
    ),
    "sleep": (("seconds", {"type": "int", "range": (1, 1209600), "required": True}),),
    "config": (("set", {"type": "settings", "required": True}),),
    "reboot": (),
    "status": (),
    "resend": (
        ("frame", {"type": "int", "range": (0, protocol.MAX_FRAME_ID), "required": True}),
        ("chunks", {"type": "int_list", "range": (0, protocol.MAX_COUNT - 1),
                    "max_items": protocol.MAX_COUNT}),
    ),
}


class Refused(Exception):
    # rule: the protocol's name for why (protocol.json's refusals.command), or None when the
    # command was well formed but cannot be carried out now (a frame no longer held).
    def __init__(self, rule, msg, cid=None, cmd=None):
        super().__init__(msg)
        self.rule = rule
        self.msg = msg
        self.cid = cid
        self.cmd = cmd


def parse(payload):
    if len(payload) > MAX_BYTES:
        raise Refused("too_long", "command longer than %d bytes" % MAX_BYTES)
    try:
        d = json.loads(payload)
    except (ValueError, UnicodeError):
        raise Refused("not_json", "command is not valid JSON")
    if not isinstance(d, dict):
        raise Refused("not_object", "command must be a JSON object")
    cid = d.get("id")
    cmd = d.get("cmd")
    if not isinstance(cmd, str):
        cmd = None
    else:
        cmd = cmd[:32]   # echoed in the ack; an unknown name of any length is not kept whole
    if not isinstance(cid, str) or not ID_MIN <= len(cid) <= ID_MAX:
        raise Refused("bad_id", "id must be a string of %d to %d characters" % (ID_MIN, ID_MAX),
                      None, cmd)
    if cmd is None:
        raise Refused("bad_cmd", "cmd must be a string", cid)
    spec = COMMANDS.get(d["cmd"])
    if spec is None:
        raise Refused("unknown_cmd", "unknown command \"%s\" (known: %s)"
                      % (cmd, ", ".join(sorted(COMMANDS))), cid, cmd)
    args = {}
    for name, a in spec:
        only_if = a.get("only_if")
        if name not in d:
            if a.get("required"):
                raise Refused("missing", "%s needs %s" % (cmd, name), cid, cmd)
            if "default" in a and (only_if is None or args.get(only_if[0]) == only_if[1]):
                args[name] = a["default"]
            continue
        if only_if is not None and args.get(only_if[0]) != only_if[1]:
            raise Refused("not_allowed", "%s only goes with %s %s"
                          % (name, only_if[0], only_if[1]), cid, cmd)
        try:
            args[name] = config.check_value(name, a, d[name])
        except config.Invalid as e:
            raise Refused(e.rule, e.msg, cid, cmd)
    return cid, cmd, args


def names(payload):
    # (id, cmd) of a command as far as they can be read, to answer one that will not be run.
    try:
        cid, cmd, _ = parse(payload)
        return cid, cmd
    except Refused as r:
        return r.cid, r.cmd


def ack(cid, cmd, result=None, error=None, code=None):
    # The ack document (docs/protocol.md, "Acks"): ok unless there is an error; code, with an
    # error, names the protocol rule a refused command broke.
    d = {"id": cid, "cmd": cmd, "ok": error is None}
    if error is None:
        d["result"] = {} if result is None else result
    else:
        d["error"] = error
        if code is not None:
            d["code"] = code
    return d
