# boot.py runs first at every start and stays tiny, so that nothing here can lock you out.
# Safe mode: a file named safe_mode on the board makes main.py skip the app and leave you at
# the REPL (create it with `mpremote touch :safe_mode`, remove it with `mpremote rm :safe_mode`).
# The app never swallows Ctrl-C, so `mpremote` can always interrupt it to get there.
import gc
import os

try:
    os.stat("safe_mode")
    print("espcam: safe mode (file safe_mode present): the app will not start")
except OSError:
    pass
gc.collect()
