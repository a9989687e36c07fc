# main.py starts the espcam app unless the board is in safe mode (see boot.py).
import os

try:
    os.stat("safe_mode")
    safe = True
except OSError:
    safe = False

if not safe:
    import gc

    # One module at a time, collecting in between: compiling a .py leaves its parse tree as
    # garbage below the new bytecode, and bytecode placed among that garbage splits the free
    # heap into pieces too small for a frame (the module driver needs one block of a JPEG's
    # size). Compiled .mpy files (espcam deploy) skip the compiler; this costs them nothing.
    try:
        for m in ("protocol", "hw", "config", "commands", "mqtt", "frames", "spool", "link",
                  "outbox", "power", "loop", "app"):
            __import__("espcam." + m)
            gc.collect()
        from espcam import app

        app.main()
    except Exception as e:
        # A bug, not a network problem (those are handled inside). Leave a trace, give a person
        # 30 s to press Ctrl-C, then start over rather than sit dead at the REPL. An update on
        # trial (boot.py) goes back to the app before it at once, and nothing of the new app
        # is trusted to do it: the imports above are inside this try for the same reason.
        import sys
        import time

        with open("last_error.txt", "w") as f:
            sys.print_exception(e, f)
        sys.print_exception(e)
        back = globals().get("espcam_rollback")
        if back is not None and back("%s: %s" % (type(e).__name__, e)):
            sys.exit()   # a soft reset: boot.py runs again and starts the previous app
        from espcam import hw

        print("espcam: crashed; resetting in 30 s (Ctrl-C for the REPL)")
        for _ in range(300):
            hw.feed()
            time.sleep_ms(100)
        hw.reset()
