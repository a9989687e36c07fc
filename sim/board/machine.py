# Host stand-in for the `machine` module of MicroPython's ESP32 port, for the simulator.
# Per-node state lives in $ESPCAM_SIM_DIR: boot.json (reset cause and wake reason of this boot,
# written by the runner), pins.json (levels of output pins), rtc.bin (RTC memory), wdt.json and
# wdt (watchdog timeout and heartbeat), ctl/ (injected events), exit.json (why the chip stopped),
# sd/ (the microSD card's files).
# What drives the input pins: a PIR on any input without a pull resistor (ctl/pir_high: its
# output is high; ctl/motion: a rising edge), and a push button on the pin that ctl/button or
# ctl/button_held name ({"pin", "level"}: the level pressing it gives). An input nothing drives
# reads its pull: 1 with PULL_UP, else 0.
import errno
import json
import os
import time

import _simboard as _sb

# Reset causes and wake reasons: the ESP32 port's values.
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
SLEEP = 2
DEEPSLEEP = 4
PIN_WAKE = 2
EXT0_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4
TOUCHPAD_WAKE = 5
ULP_WAKE = 6

_boot = _sb.read_json(_sb.path("boot.json"), {})
_freq = 160000000

# GPIOs of the ESP32: which exist, which are input-only, which are RTC GPIOs (deep-sleep wake
# and hold).
_GPIOS = tuple(range(0, 20)) + (21, 22, 23, 25, 26, 27) + tuple(range(32, 40))
_INPUT_ONLY = (34, 35, 36, 37, 38, 39)
RTC_GPIOS = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39)

_levels = {}     # pin id -> level driven (outputs) or read (inputs)
_modes = {}
_pulls = {}      # pin id -> Pin.PULL_UP or Pin.PULL_DOWN (inputs with a pull resistor on)
_held = {}
_irqs = {}       # pin id -> (trigger, handler)
_pins = {}       # one Pin object per GPIO, as on the board


def _save_pins():
    d = {}
    for k in _levels:
        if _modes.get(k) in (Pin.OUT, Pin.OPEN_DRAIN):
            d[str(k)] = _levels[k]
    _sb.write_atomic(_sb.path("pins.json"), json.dumps(d))


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    PULL_HOLD = 4
    IRQ_RISING = 1
    IRQ_FALLING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5
    DRIVE_0 = 0
    DRIVE_1 = 1
    DRIVE_2 = 2
    DRIVE_3 = 3

    def __new__(cls, id, *args, **kw):
        p = _pins.get(id)
        if p is None:
            if id not in _GPIOS:
                raise ValueError("invalid pin")
            p = object.__new__(cls)
            p._id = id
            _pins[id] = p
        return p

    def __init__(self, id, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        self.init(mode, pull, value=value, drive=drive, hold=hold)

    def init(self, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        i = self._id
        if hold is False:
            _held[i] = False
        if _held.get(i):
            return       # a held pin ignores changes until hold=False
        if mode != -1 and mode is not None:
            if mode in (Pin.OUT, Pin.OPEN_DRAIN) and i in _INPUT_ONLY:
                raise ValueError("pin can only be input")
            _modes[i] = mode
        if pull != -1:
            _pulls[i] = pull
        if value is not None:
            self.value(value)
        elif mode in (Pin.OUT, Pin.OPEN_DRAIN) and i not in _levels:
            self.value(0)
        if hold:
            _held[i] = True

    def __repr__(self):
        return "Pin(%d)" % self._id

    def value(self, v=None):
        i = self._id
        if v is None:
            if _modes.get(i) == Pin.IN:
                return input_level(i)
            return _levels.get(i, 0)
        if _held.get(i):
            return None
        v = 1 if v else 0
        if _levels.get(i) != v or i not in _levels:
            _levels[i] = v
            if _modes.get(i) in (Pin.OUT, Pin.OPEN_DRAIN):
                _save_pins()
        return None

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3, *, priority=1, wake=None, hard=False):
        if handler is None:
            _irqs.pop(self._id, None)
        else:
            _irqs[self._id] = (trigger, handler)
        return None


def input_level(i):
    # What input pin i reads now (see the top of this file).
    held = _sb.read_json(_sb.path("ctl", "button_held"))
    if held and held.get("pin") == i:
        return 1 if held.get("level") else 0
    pull = _pulls.get(i)
    if pull:
        return 1 if pull == Pin.PULL_UP else 0
    if _sb.ctl("pir_high"):
        return 1   # the PIR output held high (SimNode.pir_high)
    return _levels.get(i, 0)


def idle():
    # On the board: yield to other tasks, return at once. Here also where injected events are
    # delivered (ctl/motion: a rising edge on every input pin without a pull that has a
    # rising-edge handler; ctl/button: "edges" edges toward the pressed level on the button's
    # pin, a bouncing contact, at once), and where the runner's orderly stop (ctl/poweroff)
    # takes effect: the app calls idle() between frames, so the power goes off only once the
    # frame being sent has been sent.
    if _sb.ctl("poweroff"):
        _sb.exit_board("poweroff")
    if not _irqs:
        return None
    if _sb.take_ctl("motion"):
        for i in _irqs:
            trig, handler = _irqs[i]
            if trig & Pin.IRQ_RISING and _modes.get(i) == Pin.IN and not _pulls.get(i):
                handler(_pins[i])
    press = _sb.read_json(_sb.path("ctl", "button"))
    if press is not None and _sb.take_ctl("button"):
        i = press.get("pin")
        edge = Pin.IRQ_RISING if press.get("level") else Pin.IRQ_FALLING
        if i in _irqs and _modes.get(i) == Pin.IN and _irqs[i][0] & edge:
            for _ in range(press.get("edges", 1)):
                _irqs[i][1](_pins[i])
    return None


def disable_irq():
    return 1


def enable_irq(state=1):
    return None


def reset_cause():
    return _boot.get("reset_cause", PWRON_RESET)


def wake_reason():
    return _boot.get("wake_reason", 0)


def unique_id():
    return _sb.mac()


def freq(hz=None):
    global _freq
    if hz is None:
        return _freq
    if hz // 1000000 not in (20, 40, 80, 160, 240):
        raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
    _freq = hz


def lightsleep(time_ms=0):
    if time_ms:
        time.sleep_ms(time_ms)


sleep = lightsleep


# The ESP32 port parses deepsleep's argument into a C int: 32 bits on the chip.
_INT_MAX = 2147483647


def deepsleep(time_ms=0):
    # Never returns: the runner restarts the node after time_ms (timer wake) or, if ext0 wake
    # was armed through esp32.wake_on_ext0, earlier on injected motion (pin wake).
    if not -_INT_MAX - 1 <= time_ms <= _INT_MAX:
        raise OverflowError("overflow converting long int to machine word")
    try:
        import esp32
        ext0, level = esp32._ext0
    except (ImportError, AttributeError, TypeError):
        ext0, level = None, None
    try:
        ext1, ext1_level = esp32._ext1
    except (NameError, AttributeError, TypeError):
        ext1, ext1_level = None, None
    held = {}
    for i in _held:
        if _held[i] and i in RTC_GPIOS and i in _levels:
            held[str(i)] = _levels[i]
    # The pulls of the pins armed for a wake: the runner reads a released button's level from
    # them, as long as the RTC peripherals stay powered (ext0 armed).
    pulls = {}
    for i in ([ext0] if ext0 is not None else []) + list(ext1 or ()):
        if _pulls.get(i):
            pulls[str(i)] = 1 if _pulls[i] == Pin.PULL_UP else 0
    extra = {"ms": time_ms or None, "ext0": ext0, "level": level, "held": held}
    if ext1:
        extra["ext1"] = list(ext1)
        extra["ext1_level"] = ext1_level
    if pulls:
        extra["pulls"] = pulls
    _sb.exit_board("deepsleep", extra)


def reset():
    _sb.exit_board("reset")


def soft_reset():
    _sb.exit_board("soft_reset")


class RTC:
    _MAX = 2048

    def __init__(self, id=0):
        pass

    def memory(self, data=None):
        p = _sb.path("rtc.bin")
        if data is None:
            try:
                with open(p, "rb") as f:
                    return f.read()
            except OSError:
                return b""
        data = bytes(memoryview(data))   # any object with the buffer protocol, str included
        if len(data) > RTC._MAX:
            raise ValueError("buffer too long")
        _sb.write_atomic(p, data)

    def datetime(self, dt=None):
        # The host clock is already right; setting it is accepted and ignored.
        if dt is not None:
            return None
        t = time.localtime()
        return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)

    def init(self, dt=None):
        return None


class WDT:
    # The runner kills and restarts (WDT_RESET) a node whose heartbeat file is older than the
    # timeout. It cannot be stopped; a new WDT() reconfigures the timeout, as on the ESP32.
    def __init__(self, id=0, timeout=5000):
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        _sb.write_atomic(_sb.path("wdt.json"), json.dumps({"timeout": timeout}))
        self.feed()

    def feed(self):
        with open(_sb.path("wdt"), "w") as f:
            f.write("1")


def time_pulse_us(pin, level, timeout_us=1000000):
    return -2


class SDCard:
    # The ESP32 port's SD card host: slot 1 is the SDMMC host (1 or 4 data lines, pins fixed),
    # slots 2 and 3 are SPI (1 line). The card is the folder <ESPCAM_SIM_DIR>/sd. The board's
    # SDCard is a block device on which vfs.mount() finds FAT; this one is the mounted
    # filesystem itself (vfs.mount() takes any object with the filesystem methods), so that
    # vfs.mount(SDCard(slot=1, width=1), "/sd") makes /sd that folder, the same call as on the
    # board. Nothing here is deployed.
    # ctl/sd_missing: no card in the slot (the mount fails as the board's does, ETIMEDOUT).
    # ctl/sd_cut: the next large write to a .tmp file stops half way, as if the power went then;
    # the board freezes at that instant (SIGSTOP) and writes ctl/sd_frozen, and the test cuts
    # the power (SimNode.kill()), so the cut lands in the write every time.
    def __init__(self, slot=1, width=1, cd=None, wp=None, sck=None, miso=None, mosi=None,
                 cs=None, freq=20000000):
        if slot not in (1, 2, 3):
            raise ValueError("invalid slot")
        if width not in ((1, 4) if slot == 1 else (1,)):
            raise ValueError("invalid width")
        self._root = _sb.path("sd")

    def _p(self, path):
        return self._root + path

    def mount(self, readonly, mkfs):
        if _sb.ctl("sd_missing"):
            raise OSError(errno.ETIMEDOUT)
        _sb.mkdir(self._root)

    def umount(self):
        pass

    def deinit(self):
        pass

    def info(self):
        st = os.statvfs(self._root)
        return (st[1] * st[2], 512)

    def open(self, path, mode="r"):
        f = open(self._p(path), mode)
        if "w" in mode and path.endswith(".tmp") and _sb.ctl("sd_cut"):
            return _CutFile(f)
        return f

    def ilistdir(self, path="/"):
        return os.ilistdir(self._p(path))

    def stat(self, path):
        return os.stat(self._p(path))

    def statvfs(self, path):
        return os.statvfs(self._p(path))

    def mkdir(self, path):
        os.mkdir(self._p(path))

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def remove(self, path):
        os.remove(self._p(path))

    def rename(self, old, new):
        os.rename(self._p(old), self._p(new))

    def chdir(self, path):
        raise OSError(errno.EPERM)   # the app never changes into the card

    def getcwd(self):
        return "/"


class _CutFile:
    # A file on the card whose first write of a frame's size stops half way, the board frozen
    # right after it (see SDCard).
    def __init__(self, f):
        self._f = f

    def write(self, buf):
        mv = memoryview(buf)
        if len(mv) < 1024:
            return self._f.write(mv)
        n = len(mv) // 2
        self._f.write(mv[:n])
        self._f.flush()
        _sb.take_ctl("sd_cut")
        with open(_sb.path("ctl", "sd_frozen"), "w") as f:
            f.write(str(n))
        os.system("kill -STOP $PPID")
        return n

    def close(self):
        self._f.close()

    def flush(self):
        self._f.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
