# Runs ON MicroPython with the simulator's stand-ins (sim/board) in front of the node's hw
# module: a deep sleep the chip refuses (beyond 2**31 - 1 ms) must leave the board usable, its
# wakes disarmed, with a PIR alone (on ext0) and with a doorbell button beside it (the button on
# ext0, the PIR on ext1). Prints what a person would check, then "done".
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

hw.button_start(12, 0)
armed = []
real = esp32.wake_on_ext1


def ext1(pins, level):
    if pins:
        armed.append((esp32._ext0, [p._id for p in pins], level))
    real(pins, level)


esp32.wake_on_ext1 = ext1
try:
    hw.deepsleep(2 ** 31, 13, True)
    print("slept")
except OverflowError:
    pass
print("armed", armed[0])
print("ext0", esp32._ext0, "ext1", esp32._ext1)
print("done")
