# boot.py runs first at every start and stays tiny, so that nothing here can lock you out.
# Safe mode: a file named safe_mode on the board makes main.py skip the app and leave you at
# the REPL (create it with `mpremote touch :safe_mode`, remove it with `mpremote rm :safe_mode`).
# The app never swallows Ctrl-C, so `mpremote` can always interrupt it to get there.
#
# It also chooses which app runs (docs/deploy.md, "Over the air"): the one `espcam deploy`
# copied (lib/espcam) or an update in a slot (app_a/ or app_b/) that ota.json names. An update
# is on trial until it publishes its birth: each boot on trial is counted here, and one boot too
# many (a crash that resets, the watchdog) takes the previous app back, as main.py does at once
# for an exception. Updates never replace boot.py or main.py, so this cannot be updated away.
import gc
import json
import os
import sys

TRIAL_BOOTS = 3


def espcam_rollback(why):
    # Back to the app before the one on trial; the reason waits in ota.json for the old app to
    # report once it is online. False if nothing was on trial.
    try:
        with open("ota.json") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return False
    if not m.get("trial"):
        return False
    m["failed"] = m.get("id")
    m["report"] = {"id": m.get("id"), "state": "rolled_back", "version": m.get("ver"),
                   "error": str(why)[:200], "code": "rolled_back"}
    m["app"], m["ver"], m["prev"], m["trial"] = m.get("prev"), m.get("prev_ver"), None, False
    _espcam_mark(m)
    print("espcam: update rolled back:", why)
    return True


def _espcam_mark(m):
    with open("ota.json.tmp", "w") as f:
        json.dump(m, f)
    os.rename("ota.json.tmp", "ota.json")   # the switch is this rename: old or new, never half


def _espcam_choose():
    try:
        with open("ota.json") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return
    if m.get("trial"):
        m["boots"] = m.get("boots", 0) + 1
        if m["boots"] > TRIAL_BOOTS:
            espcam_rollback("no birth in %d boots" % TRIAL_BOOTS)
            return _espcam_choose()
        _espcam_mark(m)
    app = m.get("app")
    if app:
        try:
            os.stat(app + "/lib/espcam")
        except OSError:
            if espcam_rollback("%s/ is missing" % app):
                return _espcam_choose()
            print("espcam: %s/ is missing: running the deployed app" % app)
            return
        sys.path.insert(0, app + "/lib")


try:
    os.stat("safe_mode")
    print("espcam: safe mode (file safe_mode present): the app will not start")
except OSError:
    try:
        _espcam_choose()
    except Exception as e:   # a damaged flash must not stop the deployed app from starting
        print("espcam: cannot choose the app:", repr(e))
gc.collect()
