# Host stand-in for micropython-lib's ntptime: the host clock is already right, so settime()
# changes nothing. time() returns seconds since the port's epoch, like the real module.
import time as _time

host = "pool.ntp.org"
timeout = 1


def time():
    return int(_time.time())


def settime():
    return None
