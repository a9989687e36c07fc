# The node's only door to the hardware: camera, flash LED, PIR, doorbell button, microSD card,
# Wi-Fi, deep sleep, reset and wake causes, RTC memory and the watchdog. Everything else in the
# app calls these functions, so the same files run on an ESP32-CAM and, with host stand-ins
# for camera/machine/network/esp32, on the MicroPython unix port.
import time

import machine
import network

try:
    import esp32
except ImportError:
    esp32 = None

FLASH_PIN = 4  # the ESP32-CAM's white LED; an RTC GPIO, so it can be held low in deep sleep

FRAME_SIZES = ("QQVGA", "QCIF", "HQVGA", "QVGA", "CIF", "HVGA", "VGA", "SVGA", "XGA", "HD",
               "SXGA", "UXGA")

# ---------------------------------------------------------------- camera
# Two MicroPython drivers exist for the ESP32-CAM. The `camera` module API (lemariva and its
# forks) returns bytes or False; the `Camera` class API (micropython-camera-API) returns a
# memoryview into the driver's frame buffer that the next capture overwrites.

_cam = None        # Camera instance (class API) or the camera module (module API)
_class_api = False
_cam_ok = False
camera_error = "not started"


def _driver():
    import camera
    return camera


def camera_driver():
    try:
        cam = _driver()
    except ImportError:
        return "none"
    return "Camera" if hasattr(cam, "Camera") else "camera"


def camera_init(frame_size, quality):
    # Returns True when the camera is ready; on failure records camera_error and returns False.
    global _cam, _class_api, _cam_ok, camera_error
    camera_deinit()
    try:
        cam = _driver()
        if hasattr(cam, "Camera"):
            _class_api = True
            _cam = cam.Camera(pixel_format=cam.PixelFormat.JPEG,
                              frame_size=getattr(cam.FrameSize, frame_size),
                              jpeg_quality=quality, init=False)
            _cam.init()
        else:
            _class_api = False
            _cam = cam
            # The module driver outlives a soft reset (Ctrl-D, mpremote): its C state from the
            # previous interpreter makes init() fail until deinit() is called.
            try:
                cam.deinit()
            except Exception:
                pass
            if cam.init(0, format=cam.JPEG, fb_location=cam.PSRAM) is False:
                raise OSError("camera.init failed")
            cam.framesize(getattr(cam, "FRAME_" + frame_size))
            cam.quality(_module_quality(quality))
        _cam_ok = True
        camera_error = "ok"
    except Exception as e:
        _cam_ok = False
        camera_error = "init: %r" % (e,)
    return _cam_ok


def _class_quality(q):
    # micropython-camera-API made quality a property and deprecated set_quality(); releases
    # before that have only the method.
    try:
        _cam.quality = q
    except AttributeError:
        _cam.set_quality(q)


def _module_quality(q):
    # The camera module's quality is 10..63 with lower meaning better; ours is 1..100, higher
    # better. Below 10 the driver produces frames too large for a board without PSRAM.
    return 63 - (q - 1) * 53 // 99


def camera_configure(frame_size, quality):
    global camera_error
    if not _cam_ok:
        return camera_init(frame_size, quality)
    try:
        if _class_api:
            _cam.reconfigure(frame_size=getattr(_driver().FrameSize, frame_size))
            _class_quality(quality)
        else:
            _cam.framesize(getattr(_cam, "FRAME_" + frame_size))
            _cam.quality(_module_quality(quality))
        return True
    except Exception as e:
        camera_error = "configure: %r" % (e,)
        return camera_init(frame_size, quality)


def camera_frames_on_heap():
    # The module driver copies each frame onto the MicroPython heap; the class driver hands out
    # a view of its own buffer, outside the heap on a board.
    return not _class_api


def camera_capture(frame_size, quality):
    # Returns a buffer (bytes or memoryview) holding one JPEG, or None. A failed capture
    # re-initialises the camera once, which clears most sensor hiccups. MemoryError (the module
    # driver found no room on the heap for the frame) is raised for the caller, who can make
    # room, after a re-init: the driver returns its frame buffer only after its copy succeeded.
    global camera_error
    why = None
    for attempt in (0, 1):
        if not _cam_ok and not camera_init(frame_size, quality):
            return None
        try:
            buf = _cam.capture()
            if buf and len(buf) > 2:
                camera_error = "ok"
                return buf
            why = "capture returned nothing"
        except MemoryError:
            buf = None
            camera_init(frame_size, quality)
            raise
        except Exception as e:
            why = "capture: %r" % (e,)
        buf = None
        camera_init(frame_size, quality)
    camera_error = why
    return None


def camera_deinit():
    global _cam, _cam_ok
    if _cam is not None:
        try:
            _cam.deinit()
        except Exception:
            pass
    _cam = None
    _cam_ok = False


# ---------------------------------------------------------------- microSD card
# The ESP32-CAM's slot in 1-bit SD mode: slot 1 (the SDMMC host, pins fixed on the ESP32: CLK
# GPIO14, CMD GPIO15, D0 GPIO2), width 1, so that D1 to D3 stay free: GPIO4 drives the flash
# LED (which flickers with every card access in 4-bit mode), GPIO12 and GPIO13 stay free for a
# PIR. docs/hardware.md has the wiring.

SD_PATH = "/sd"
_sd = None


def sd_mount():
    # Mounts the card's FAT filesystem at SD_PATH; raises OSError when there is no card.
    global _sd
    try:
        import vfs
        mount = vfs.mount
    except ImportError:        # MicroPython before 1.23: mount was in os
        import os
        mount = os.mount
    if _sd is None:
        _sd = machine.SDCard(slot=1, width=1)
    try:
        mount(_sd, SD_PATH)
    except OSError as e:
        if e.args and e.args[0] == 1:   # EPERM: mounted already (a boot after a soft reset)
            return
        raise


def sd_release():
    # Before deep sleep: every file is closed between uses, so unmounting only stops the host.
    global _sd
    if _sd is None:
        return
    try:
        try:
            import vfs
            vfs.umount(SD_PATH)
        except ImportError:
            import os
            os.umount(SD_PATH)
    except Exception:
        pass
    try:
        _sd.deinit()
    except Exception:
        pass
    _sd = None


# ---------------------------------------------------------------- flash LED and PIR

_flash = None


def flash(on):
    global _flash
    if _flash is None:
        _flash = machine.Pin(FLASH_PIN, machine.Pin.OUT, value=0)
    _flash.value(1 if on else 0)


def flash_is_on():
    return _flash is not None and _flash.value() == 1


_pir = None
_pir_hits = 0


def _pir_irq(pin):
    # Interrupt context: no allocation, just count; the main loop debounces.
    global _pir_hits
    _pir_hits += 1


def pir_start(pin_no):
    global _pir
    _pir = machine.Pin(pin_no, machine.Pin.IN)
    _pir.irq(trigger=machine.Pin.IRQ_RISING, handler=_pir_irq)


def pir_high(pin_no):
    # The PIR output level now: high for a few seconds after each detection.
    p = _pir if _pir is not None else machine.Pin(pin_no, machine.Pin.IN)
    return p.value() == 1


def pir_take():
    # Returns how many rising edges arrived since the last call.
    global _pir_hits
    state = machine.disable_irq()
    n = _pir_hits
    _pir_hits = 0
    machine.enable_irq(state)
    return n


# The doorbell button: a push button from its GPIO to GND (level 0, the internal pull-up holds
# the pin high while it is released) or to 3.3 V (level 1, the internal pull-down). A contact
# bounces for a few milliseconds: every edge toward the pressed level is counted, with the time
# of the last, and the main loop takes them as one press once they have been quiet for the
# debounce time.

_button = None
_button_level = 0
_button_hits = 0
_button_last = 0


def _button_irq(pin):
    # Interrupt context: no allocation (ticks_ms returns a small int).
    global _button_hits, _button_last
    _button_hits += 1
    _button_last = time.ticks_ms()


def button_start(pin_no, level):
    global _button, _button_level
    _button_level = level
    P = machine.Pin
    _button = P(pin_no, P.IN, P.PULL_DOWN if level else P.PULL_UP)
    _button.irq(trigger=P.IRQ_RISING if level else P.IRQ_FALLING, handler=_button_irq)


def button_pressed():
    return _button is not None and _button.value() == _button_level


def button_take(debounce_ms):
    # True once for every press: edges that came within debounce_ms of each other are one, and
    # it is taken only when debounce_ms have passed since the last of them.
    global _button_hits
    state = machine.disable_irq()
    hit = _button_hits and time.ticks_diff(time.ticks_ms(), _button_last) >= debounce_ms
    if hit:
        _button_hits = 0
    machine.enable_irq(state)
    return bool(hit)


def idle():
    # Lets the CPU rest until the next interrupt; the host stand-in delivers injected events here.
    machine.idle()


# ---------------------------------------------------------------- Wi-Fi

_wlan = None


def wlan():
    global _wlan
    if _wlan is None:
        _wlan = network.WLAN(network.STA_IF)
    return _wlan


def mac():
    m = wlan().config("mac")
    return ":".join("%02x" % b for b in m)


def wifi_connect(ssid, password, static, timeout_ms, feed):
    # static: None or (ip, netmask, gateway, dns). Returns the IP, or raises OSError with the
    # reason the driver gave (wrong password, no AP found, timeout). On the ESP32 a connect()
    # while an earlier attempt is still alive in the driver raises "Wifi Internal State
    # Error", so every attempt starts and every failed one ends with disconnect().
    w = wlan()
    w.active(True)
    if w.isconnected():
        return w.ifconfig()[0]
    if static:
        w.ifconfig(tuple(static))
    _disconnect(w)
    w.connect(ssid, password)
    start = time.ticks_ms()
    why = None
    while not w.isconnected():
        st = w.status()
        if st == getattr(network, "STAT_WRONG_PASSWORD", -99):
            why = "wifi: wrong password"
        elif st == getattr(network, "STAT_NO_AP_FOUND", -99):
            why = "wifi: no access point named %r" % ssid
        elif time.ticks_diff(time.ticks_ms(), start) > timeout_ms:
            why = "wifi: not connected after %d ms (status %r)" % (timeout_ms, st)
        if why:
            _disconnect(w)
            raise OSError(why)
        feed()
        time.sleep_ms(20)
    return w.ifconfig()[0]


def _disconnect(w):
    try:
        w.disconnect()
    except OSError:
        pass


def wifi_connected():
    return wlan().isconnected()


def wifi_rssi():
    try:
        return wlan().status("rssi")
    except Exception:
        return None


def wifi_ip():
    try:
        return wlan().ifconfig()[0]
    except Exception:
        return None


def wifi_off():
    w = wlan()
    try:
        w.disconnect()
    except Exception:
        pass
    w.active(False)


# ---------------------------------------------------------------- reset, sleep, RTC, watchdog

def reset_cause():
    c = machine.reset_cause()
    for name, label in (("DEEPSLEEP_RESET", "deepsleep"), ("PWRON_RESET", "power_on"),
                        ("HARD_RESET", "hard"), ("WDT_RESET", "wdt"),
                        ("SOFT_RESET", "soft")):
        if c == getattr(machine, name, None):
            return label
    return "unknown"


def wake_reason():
    # "timer", "ext0", "ext1", "none" or "other": which input woke the chip is the app's to say
    # (deepsleep() below puts the button on ext0 and, with a button, the PIR on ext1).
    try:
        w = machine.wake_reason()
    except Exception:
        return "none"
    if w == getattr(machine, "TIMER_WAKE", None):
        return "timer"
    for name, label in (("EXT0_WAKE", "ext0"), ("PIN_WAKE", "ext0"), ("EXT1_WAKE", "ext1")):
        if w == getattr(machine, name, None):
            return label
    if not w:
        return "none"
    return "other"


def rtc_load():
    try:
        return machine.RTC().memory()
    except Exception:
        return b""


def rtc_save(data):
    try:
        machine.RTC().memory(data)
    except Exception:
        pass


def deepsleep(ms, pir_pin=None, button=False):
    # Never returns on a board unless machine.deepsleep() raises (OverflowError beyond
    # 2**31 - 1 ms): then the holds and the wakes are undone and the error re-raised, with the
    # camera off and Wi-Fi down. The flash LED pin is driven low and held, or it floats and the
    # LED glows through the whole sleep. pir_pin: arm the PIR's wake on that pin. button: arm
    # the doorbell button's wake (button_start() first).
    # The button takes ext0: ext0 keeps the RTC peripherals powered through the sleep, and with
    # them the internal pull that holds a released button's pin at its idle level (ext1 alone
    # lets ESP-IDF power them down, and the pin would float). The PIR drives its output both
    # ways and needs no pull: ext0 when there is no button, else ext1 (one pin, any high), so
    # that the wake reason tells the two apart.
    camera_deinit()
    sd_release()
    flash(False)
    try:
        _flash.init(machine.Pin.OUT, value=0, hold=True)
    except Exception:
        pass
    if esp32 is not None:
        try:
            esp32.gpio_deep_sleep_hold(True)
        except Exception:
            pass
        if button:
            esp32.wake_on_ext0(pin=_button, level=_button_level)
        if pir_pin is not None:
            pir = machine.Pin(pir_pin, machine.Pin.IN)
            if _button is None:
                esp32.wake_on_ext0(pin=pir, level=esp32.WAKEUP_ANY_HIGH)
            else:
                esp32.wake_on_ext1(pins=(pir,), level=esp32.WAKEUP_ANY_HIGH)
    wifi_off()
    try:
        machine.deepsleep(ms)
    except Exception:
        if esp32 is not None:
            try:
                esp32.gpio_deep_sleep_hold(False)
                esp32.wake_on_ext0(None, esp32.WAKEUP_ANY_HIGH)
                esp32.wake_on_ext1(None, esp32.WAKEUP_ANY_HIGH)
            except Exception:
                pass
        release_holds()
        raise


def release_holds():
    # After waking from deep sleep the flash pin is still held; let go so we can drive it.
    try:
        machine.Pin(FLASH_PIN, machine.Pin.OUT, value=0, hold=False)
    except Exception:
        pass
    flash(False)


def reset():
    machine.reset()


_wdt = None


def watchdog_start(timeout_ms):
    global _wdt
    _wdt = machine.WDT(timeout=timeout_ms)


def feed():
    if _wdt is not None:
        _wdt.feed()


def heap_free():
    import gc
    return gc.mem_free()


def _heap_grows():
    # ESP32 firmware from MicroPython 1.21 on starts with a small heap and adds ESP-IDF memory
    # (PSRAM included) to it as it fills; older firmware has the whole heap from the start.
    import sys
    return sys.platform == "esp32" and tuple(sys.implementation.version[:2]) >= (1, 21)


_grows = None


def heap_spare():
    # Bytes the heap can still give: its free space, and what a growing heap can still add
    # (the largest free block ESP-IDF has for it).
    global _grows
    import gc
    n = gc.mem_free()
    if _grows is None:
        _grows = _heap_grows()
    if _grows and esp32 is not None:
        try:
            n += max(r[2] for r in esp32.idf_heap_info(esp32.HEAP_DATA))
        except Exception:
            pass
    return n


def unix_time():
    # None until the clock has been set (NTP). MicroPython ports before 1.22 count from 2000.
    t = time.time()
    if time.gmtime(0)[0] == 2000:
        t += 946684800
    return t if t > 1700000000 else None


def sync_clock():
    try:
        import ntptime
        ntptime.settime()
        return True
    except Exception:
        return False


def firmware():
    import sys
    v = sys.implementation.version
    return "%d.%d.%d" % (v[0], v[1], v[2])
