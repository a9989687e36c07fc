# Shared plumbing of the host stand-ins (camera, machine, network, esp32, ntptime): where the
# node's simulation folder is, its sim.json, and small file helpers. MicroPython code.
import json
import os

DIR = os.getenv("ESPCAM_SIM_DIR") or "."
_cfg = None


def path(*parts):
    return "/".join((DIR,) + parts)


def exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def cfg():
    # sim.json, written by the runner; {} if absent (stand-ins then use their defaults).
    global _cfg
    if _cfg is None:
        try:
            with open(path("sim.json")) as f:
                _cfg = json.load(f)
        except (OSError, ValueError):
            _cfg = {}
    return _cfg


def ctl(name):
    # True when the runner (or a test) has created <dir>/ctl/<name>.
    return exists(path("ctl", name))


def take_ctl(name):
    # Consumes a one-shot event file; True if it was there.
    try:
        os.remove(path("ctl", name))
        return True
    except OSError:
        return False


def read_json(p, default=None):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write_atomic(p, data):
    # Readers never see half a file: write a temporary file, then rename over the target.
    tmp = p + ".tmp"
    with open(tmp, "wb" if isinstance(data, (bytes, bytearray, memoryview)) else "w") as f:
        f.write(data)
    os.rename(tmp, p)


def mkdir(p):
    try:
        os.mkdir(p)
    except OSError:
        pass


def mac():
    m = cfg().get("mac", "24:0a:c4:00:00:01")
    return bytes(int(x, 16) for x in m.split(":"))


def exit_board(why, extra=None):
    # Ends the process the way the chip would: at once, without unwinding the app's try/finally
    # blocks. Records why in exit.json for the runner, then has the shell kill its parent (us).
    d = {"why": why}
    if extra:
        d.update(extra)
    write_atomic(path("exit.json"), json.dumps(d))
    os.system("kill -9 $PPID")
    raise SystemExit(3)   # not reached unless kill failed
