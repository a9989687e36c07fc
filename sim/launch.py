# Power-up of a simulated board, run BY MicroPython (the unix port), never by CPython:
#   micropython sim/launch.py <board folder> <node source folder>
# Like the ESP32 port's main.c: cwd is the board's filesystem, boot.py runs (an exception in it
# is printed and main.py still runs), then main.py. An exception escaping main.py leaves a board
# at the REPL: here the process prints it and exits with status 1, and the runner does not
# restart it. sys.exit() in main.py is a soft reset on the board, and so it is here.
import os
import sys

import _simboard


def run(path, g):
    try:
        with open(path) as f:
            src = f.read()
    except OSError:
        return False  # pyexec_file_if_exists: a missing file is skipped
    g["__file__"] = path
    exec(compile(src, path, "exec"), g)
    return True


def main():
    board, src = sys.argv[1], sys.argv[2]
    os.chdir(board)
    sys.path[0] = ""  # the board's own folder first, as on the ESP32 ('' then '/lib')
    g = {"__name__": "__main__"}
    try:
        run(src + "/boot.py", g)
    except SystemExit:
        _simboard.exit_board("soft_reset")
    except BaseException as e:
        sys.print_exception(e)
    try:
        run(src + "/main.py", g)
    except SystemExit:
        _simboard.exit_board("soft_reset")
    except BaseException as e:
        sys.print_exception(e)
        print("simulator: main.py raised; the board would now sit at the REPL")
        sys.exit(1)


main()
