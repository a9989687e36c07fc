# Where updates live on the board's flash (docs/deploy.md, "Over the air"): the two app slots,
# next/ while an update arrives, and ota.json, the mark that tells boot.py which slot to run.
# Shared by the updater (ota.py) and nothing else on the node; boot.py keeps its own copy of
# the mark's rules, because it runs before lib/ is on the path.
import json
import os

MARK = "ota.json"
NEXT = "next"
SLOTS = ("app_a", "app_b")


def read_mark():
    try:
        with open(MARK) as f:
            m = json.load(f)
        return m if isinstance(m, dict) else {}
    except (OSError, ValueError):
        return {}


def write_mark(m):
    with open(MARK + ".tmp", "w") as f:
        json.dump(m, f)
    os.rename(MARK + ".tmp", MARK)


def rollback(m, why):
    # The same as boot.py's, for a new app that finds itself broken (no birth in time).
    m["failed"] = m.get("id")
    m["report"] = {"id": m.get("id"), "state": "rolled_back", "version": m.get("ver"),
                   "error": why, "code": "rolled_back"}
    m["app"], m["ver"] = m.get("prev"), m.get("prev_ver")
    m["prev"] = None
    m["trial"] = False
    write_mark(m)


def rmtree(path):
    try:
        kids = os.listdir(path)
    except OSError:
        return
    for k in kids:
        p = path + "/" + k
        try:
            os.remove(p)
        except OSError:
            rmtree(p)
    os.rmdir(path)


def size_of(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def makedirs(path):
    at = ""
    for part in path.split("/"):
        at = at + "/" + part if at else part
        try:
            os.mkdir(at)
        except OSError:
            pass
