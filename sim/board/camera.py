# Host stand-in for the ESP32-CAM camera drivers. sim.json "camera_api" picks which one this
# module looks like:
#   "module": the `camera` module of lemariva/micropython-camera-driver: init(0, ...) -> True,
#             capture() -> bytes or False, framesize(FRAME_*), quality(10..63), deinit().
#   "class":  cnadler86/micropython-camera-API: Camera(...), capture() -> memoryview into the
#             driver's frame buffer (overwritten by the next capture) or None.
# Frames are the JPEG files of sim.json "images" (sorted, cycled). Every frame handed to the
# app is first copied to <ESPCAM_SIM_DIR>/captures/<6-digit seq>.jpg, with the flash LED's
# level at that moment in <seq>.json. A file ctl/camera_fail makes init and capture fail like
# a camera with a loose ribbon cable; ctl/camera_stuck makes init fail in a boot that followed a
# soft reset, like boards whose sensor only probes again after the chip is reset. The module
# driver's C state outlives a soft reset (file camera.on, removed by the runner at every chip
# reset): init() then fails until deinit() is called.
import json
import os

import _simboard as _sb
import machine

_API = _sb.cfg().get("camera_api", "module")
_files = None
_seq = None


def _images():
    global _files
    if _files is None:
        d = _sb.cfg().get("images") or _sb.path("images")
        names = sorted(n for n in os.listdir(d) if n.lower().endswith((".jpg", ".jpeg")))
        _files = [d + "/" + n for n in names]
        if not _files:
            raise OSError("no JPEG files in " + d)
    return _files


def _next_seq():
    # Capture numbers run on across restarts of the node process: start above the last file.
    global _seq
    if _seq is None:
        _sb.mkdir(_sb.path("captures"))
        _seq = 0
        for n in os.listdir(_sb.path("captures")):
            if n.endswith(".jpg") and n[:6].isdigit():
                _seq = max(_seq, int(n[:6]))
    _seq += 1
    return _seq


def _record(seq, buf):
    _sb.write_atomic(_sb.path("captures", "%06d.jpg" % seq), buf)
    _sb.write_atomic(_sb.path("captures", "%06d.json" % seq),
                     json.dumps({"flash": machine.Pin(4).value()}))


def _max_image_size():
    return max(os.stat(p)[6] for p in _images())


def _failing():
    return _sb.ctl("camera_fail")


def _stuck():
    return _sb.ctl("camera_stuck") and machine.reset_cause() == machine.SOFT_RESET


if _API == "class":
    # ------------------------------------------------ micropython-camera-API (Camera class)

    class FrameSize:
        R96X96 = 0
        QQVGA = 1
        R128x128 = 2
        QCIF = 3
        HQVGA = 4
        R240X240 = 5
        QVGA = 6
        R320X320 = 7
        CIF = 8
        HVGA = 9
        VGA = 10
        SVGA = 11
        XGA = 12
        HD = 13
        SXGA = 14
        UXGA = 15
        FHD = 16
        P_HD = 17
        P_3MP = 18
        QXGA = 19
        QHD = 20
        WQXGA = 21
        P_FHD = 22
        QSXGA = 23

    class PixelFormat:
        RGB565 = 0
        YUV422 = 1
        YUV420 = 2
        GRAYSCALE = 3
        JPEG = 4
        RGB888 = 5
        RAW = 6
        RGB444 = 7
        RGB555 = 8

    class GrabMode:
        WHEN_EMPTY = 0
        LATEST = 1

    class GainCeiling:
        X2 = 0
        X4 = 1
        X8 = 2
        X16 = 3
        X32 = 4
        X64 = 5
        X128 = 6

    _active = None   # the driver is a singleton: a new Camera deinits the previous one

    class Camera:
        def __init__(self, *, data_pins=None, pclk_pin=None, vsync_pin=None, href_pin=None,
                     sda_pin=None, scl_pin=None, xclk_pin=None, i2c=None, xclk_freq=20000000,
                     powerdown_pin=None, reset_pin=None, pixel_format=PixelFormat.RGB565,
                     frame_size=FrameSize.QVGA, jpeg_quality=85, fb_count=1,
                     grab_mode=GrabMode.WHEN_EMPTY, init=True):
            global _active
            if not 0 <= jpeg_quality <= 100:
                raise ValueError("jpeg quality must be in range 0-100")
            if _active is not None and _active is not self:
                _active.deinit()
            _active = self
            self._pixel_format = pixel_format
            self._frame_size = frame_size
            self._quality = jpeg_quality
            self._fb_count = fb_count
            self._grab_mode = grab_mode
            self._on = False
            self._buf = None
            self._held = False
            # The driver always initialises and grabs one test frame, then deinits if init=False.
            self.init()
            if not init:
                self.deinit()

        def init(self):
            if self._on:
                return
            if _failing() or _stuck():
                raise OSError("Failed to capture initial frame. Run reconfigure().")
            if self._buf is None:
                self._buf = bytearray(_max_image_size())
            self._on = True

        def deinit(self):
            # The driver gives its frame buffer back: a memoryview still held by the app now
            # shows other bytes, so a stale frame is caught by any test comparing bytes.
            self._on = False
            self._held = False
            if self._buf is not None:
                z = bytes(256)
                mv = memoryview(self._buf)
                for i in range(0, len(self._buf), 256):
                    n = min(256, len(self._buf) - i)
                    mv[i:i + n] = z[:n]

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.deinit()

        def _check(self):
            if not self._on:
                raise OSError("Camera not initialized")

        def capture(self):
            self._check()
            self._held = False          # the previous frame buffer goes back to the driver
            if _failing():
                return None
            if self._pixel_format != PixelFormat.JPEG:
                raise OSError("simulated camera only produces JPEG")
            seq = _next_seq()
            files = _images()
            with open(files[(seq - 1) % len(files)], "rb") as f:
                n = f.readinto(self._buf)
            mv = memoryview(self._buf)[:n]
            _record(seq, mv)
            self._held = True
            return mv

        def free_buffer(self):
            self._held = False

        def frame_available(self):
            return self._on

        def reconfigure(self, frame_size=None, pixel_format=None, grab_mode=None,
                        fb_count=None):
            self._check()
            self.deinit()
            if frame_size is not None:
                self._frame_size = frame_size
            if pixel_format is not None:
                self._pixel_format = pixel_format
            if grab_mode is not None:
                self._grab_mode = grab_mode
            if fb_count is not None:
                self._fb_count = min(2, max(1, fb_count))
            self.init()

        @property
        def quality(self):
            return self._quality

        @quality.setter
        def quality(self, q):
            self._check()
            if not 0 <= q <= 100:
                raise ValueError("Invalid setting for quality")
            self._quality = q

        def get_quality(self):   # deprecated by the driver in favour of the property
            return self._quality

        def set_quality(self, q):
            self.quality = q

        def get_frame_size(self):
            return self._frame_size

        def set_frame_size(self, fs):
            self._check()
            self._held = False
            self._frame_size = fs

        def get_pixel_format(self):
            return self._pixel_format

        def get_fb_count(self):
            return self._fb_count

        def get_grab_mode(self):
            return self._grab_mode

        def get_sensor_name(self):
            return "OV2640"

else:
    # ------------------------------------------------ lemariva camera module
    JPEG = 4
    YUV422 = 1
    GRAYSCALE = 3
    RGB565 = 0
    DRAM = 0
    PSRAM = 1
    XCLK_10MHz = 10000000
    XCLK_20MHz = 20000000
    FRAME_96X96 = 0
    FRAME_QQVGA = 1
    FRAME_QCIF = 3
    FRAME_HQVGA = 4
    FRAME_240X240 = 5
    FRAME_QVGA = 6
    FRAME_CIF = 8
    FRAME_HVGA = 9
    FRAME_VGA = 10
    FRAME_SVGA = 11
    FRAME_XGA = 12
    FRAME_HD = 13
    FRAME_SXGA = 14
    FRAME_UXGA = 15
    FRAME_FHD = 16
    FRAME_P_HD = 17
    FRAME_P_3MP = 18
    FRAME_QXGA = 19
    FRAME_QHD = 20
    FRAME_WQXGA = 21
    FRAME_P_FHD = 22
    FRAME_QSXGA = 23
    WB_NONE = 0
    WB_SUNNY = 1
    WB_CLOUDY = 2
    WB_OFFICE = 3
    WB_HOME = 4
    EFFECT_NONE = 0
    EFFECT_NEG = 1
    EFFECT_BW = 2
    EFFECT_RED = 3
    EFFECT_GREEN = 4
    EFFECT_BLUE = 5
    EFFECT_RETRO = 6

    _on = False
    _framesize = FRAME_VGA
    _quality = 12

    def init(_id, *, format=JPEG, framesize=FRAME_VGA, quality=12, xclk_freq=XCLK_10MHz,
             fb_size=1, fb_location=DRAM, **pins):
        global _on, _framesize, _quality
        if format not in (JPEG, YUV422, GRAYSCALE, RGB565):
            raise ValueError("Image format is not valid")
        if not FRAME_96X96 <= framesize <= FRAME_QSXGA:
            raise ValueError("Image framesize is not valid")
        if xclk_freq not in (XCLK_10MHz, XCLK_20MHz):
            raise ValueError("xclk frequency is not valid")
        if format != JPEG:
            raise ValueError("simulated camera only produces JPEG")
        if _failing() or _stuck() or (not _on and _sb.exists(_sb.path("camera.on"))):
            raise OSError("Camera Init Failed")
        _framesize = framesize
        _quality = quality
        _on = True
        _sb.write_atomic(_sb.path("camera.on"), "1")
        return True

    def deinit():
        global _on
        _on = False
        try:
            os.remove(_sb.path("camera.on"))
        except OSError:
            pass
        return True

    def capture():
        if not _on or _failing():
            return False
        seq = _next_seq()
        files = _images()
        name = files[(seq - 1) % len(files)]
        with open(name, "rb") as f:
            data = f.read(os.stat(name)[6])   # one allocation of the frame's size, as the driver
        _record(seq, data)
        return data

    def framesize(fs):
        global _framesize
        if not FRAME_96X96 <= fs <= FRAME_QSXGA:
            raise ValueError("Image framesize is not valid")
        if not _on:
            return False
        _framesize = fs

    def quality(q):
        global _quality
        if not _on:
            return False
        _quality = q

    def _setting(v):
        if not _on:
            return False

    flip = mirror = contrast = saturation = brightness = speffect = whitebalance = _setting
