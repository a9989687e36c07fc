# Power-up of the virtual board (tests/vboard.py). Run BY MicroPython's unix port as
#   micropython -i tests/vboard_boot.py <board folder>
# Like the ESP32 port: the folder is the filesystem, boot.py then main.py run if present, an
# exception (Ctrl-C included) is printed, and then the board sits at the REPL (-i), where
# mpremote finds it. sys.exit() in either file is a soft reset, as on the board.
import os
import sys

os.chdir(sys.argv[1])
sys.path[0] = ""  # the filesystem first, as on the ESP32 ('' then '/lib')
_g = {"__name__": "__main__"}


def _run(name):
    try:
        with open(name) as f:
            src = f.read()
    except OSError:
        return  # a missing file is skipped, as on the board
    try:
        exec(compile(src, name, "exec"), _g)
    except SystemExit:
        import _simboard

        _simboard.exit_board("soft_reset")
    except BaseException as e:  # the board prints any exception and carries on to the REPL
        sys.print_exception(e)


_run("boot.py")
_run("main.py")
