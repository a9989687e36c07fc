# Runs ON MicroPython with the simulator's stand-ins (sim/board) in front of the node's hw
# module: a deep sleep the chip refuses (beyond 2**31 - 1 ms) must leave the board usable.
# Prints what a person would check, then "done".
import esp32

from espcam import hw

hw.flash(True)
try:
    hw.deepsleep(2 ** 31, 13)
    print("slept")
except OverflowError as e:
    print("refused", e)
hw.flash(True)   # the LED pin must no longer be held low
print("flash", hw.flash_is_on())
print("ext0", esp32._ext0)
print("done")
