# Host stand-in for the `esp32` module of MicroPython's ESP32 port (the parts a camera node uses).
import machine

WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True
HEAP_DATA = 4
HEAP_EXEC = 1

_ext0 = None          # (gpio, level) armed by wake_on_ext0, read by machine.deepsleep
_ext1 = None
_hold = False


def _pin_id(pin):
    if isinstance(pin, machine.Pin):
        return pin._id
    return int(pin)


def wake_on_ext0(pin, level):
    global _ext0
    if pin is None:
        _ext0 = None
        return
    i = _pin_id(pin)
    if i not in machine.RTC_GPIOS:
        raise ValueError("invalid pin")
    _ext0 = (i, 1 if level else 0)


def wake_on_ext1(pins, level):
    global _ext1
    ids = [_pin_id(p) for p in pins or ()]
    for i in ids:
        if i not in machine.RTC_GPIOS:
            raise ValueError("invalid pin")
    _ext1 = (ids, 1 if level else 0) if ids else None


def wake_on_touch(wake):
    pass


def wake_on_ulp(wake):
    pass


def gpio_deep_sleep_hold(enable):
    global _hold
    _hold = bool(enable)


def raw_temperature():
    return 128     # degrees Fahrenheit, raw and uncalibrated like the real sensor (~53 C)


def idf_heap_info(caps):
    return [(4194304, 4000000, 3900000, 3800000)]
