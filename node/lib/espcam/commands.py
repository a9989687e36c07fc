# Reading commands (docs/protocol.md, "Commands"). parse() turns a payload into a checked
# (id, cmd, args) or raises Refused carrying whatever id and cmd could be read, so every
# message on the command topic gets exactly one ack, with a reason a person can act on.
import json

from espcam import config

# 14 days: the broker forgets a session (and the commands queued for it) after
# persistent_client_expiration 14d, and machine.deepsleep() takes at most 2**31 - 1 ms (24.8 d).
MAX_SLEEP = 1209600
MAX_PULSE = 5000


class Refused(Exception):
    def __init__(self, msg, cid=None, cmd=None):
        super().__init__(msg)
        self.msg = msg
        self.cid = cid
        self.cmd = cmd


def _int(d, key, low, high, default=None):
    v = d.get(key, default)
    if type(v) is not int:
        raise ValueError("%s must be an integer" % key)
    if not low <= v <= high:
        raise ValueError("%s must be between %d and %d" % (key, low, high))
    return v


def _capture(d):
    return None


def _flash(d):
    state = d.get("state")
    if state not in ("on", "off", "pulse"):
        raise ValueError("state must be one of on, off, pulse")
    ms = _int(d, "ms", 1, MAX_PULSE, 200) if state == "pulse" else 0
    return (state, ms)


def _sleep(d):
    return _int(d, "seconds", 1, MAX_SLEEP)


def _config(d):
    s = d.get("set")
    if not isinstance(s, dict) or not s:
        raise ValueError('config needs "set": an object of settings')
    out = {}
    for k in s:
        out[k] = config.check_setting(k, s[k])
    return out


def _none(d):
    return None


def _resend(d):
    fid = _int(d, "frame", 0, 0xFFFFFFFF)
    chunks = d.get("chunks")
    if chunks is not None:
        if not isinstance(chunks, list) or not chunks or len(chunks) > 65535:
            raise ValueError("chunks must be a non-empty list of chunk indices")
        for i in chunks:
            if type(i) is not int or not 0 <= i < 65535:
                raise ValueError("chunks must hold integers 0..65534")
    return (fid, chunks)


HANDLERS = {
    "capture": _capture,
    "flash": _flash,
    "sleep": _sleep,
    "config": _config,
    "reboot": _none,
    "status": _none,
    "resend": _resend,
}


def parse(payload):
    if len(payload) > 1024:
        raise Refused("command longer than 1024 bytes")
    try:
        d = json.loads(payload)
    except (ValueError, UnicodeError):
        raise Refused("command is not valid JSON")
    if not isinstance(d, dict):
        raise Refused("command must be a JSON object")
    cid = d.get("id")
    if not isinstance(cid, str) or not 1 <= len(cid) <= 64:
        raise Refused("id must be a string of 1 to 64 characters", None, _str_or_none(d.get("cmd")))
    cmd = d.get("cmd")
    if not isinstance(cmd, str):
        raise Refused("cmd must be a string", cid)
    h = HANDLERS.get(cmd)
    if h is None:
        raise Refused("unknown command %r (known: %s)" % (cmd[:32], ", ".join(sorted(HANDLERS))),
                      cid, cmd[:32])
    try:
        return cid, cmd, h(d)
    except ValueError as e:
        raise Refused(str(e), cid, cmd)


def names(payload):
    # (id, cmd) of a command as far as they can be read, to answer one that will not be run.
    try:
        cid, cmd, _ = parse(payload)
        return cid, cmd
    except Refused as r:
        return r.cid, r.cmd


def _str_or_none(v):
    return v[:32] if isinstance(v, str) else None
