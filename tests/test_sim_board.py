"""The simulator's host stand-ins (sim/board) on the real MicroPython unix port, without the
node app: small MicroPython snippets run with MICROPYPATH and ESPCAM_SIM_DIR set."""

from __future__ import annotations

import io
import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from espcam.sim.chip import BOARD_LIB, micropython_binary
from espcam.sim.images import jpeg_of_size, make_jpeg, make_pool
from PIL import Image


@pytest.fixture
def simdir(tmp_path: Path) -> Path:
    make_pool(tmp_path / "images", "t", count=3, frame_size="QVGA")
    (tmp_path / "ctl").mkdir()
    write_sim(tmp_path, "module")
    return tmp_path


def write_sim(d: Path, camera_api: str, **extra: object) -> None:
    cfg = {
        "camera_api": camera_api,
        "images": str(d / "images"),
        "mac": "24:0a:c4:01:02:03",
        "wifi": {"ssid": "home", "password": "secret"},
        "wifi_connect_ms": 0,
    }
    cfg.update(extra)
    (d / "sim.json").write_text(json.dumps(cfg))


def mpy(d: Path, code: str) -> str:
    """Runs a MicroPython snippet with the stand-ins; returns stdout, fails on an exception."""
    env = {**os.environ, "ESPCAM_SIM_DIR": str(d), "MICROPYPATH": str(BOARD_LIB)}
    r = subprocess.run(
        [micropython_binary(), "-c", textwrap.dedent(code)],
        env=env,
        cwd=d,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def images(d: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((d / "images").glob("*.jpg"))]


def captures(d: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((d / "captures").glob("*.jpg"))]


def test_module_camera_returns_the_images_cycled_and_records_each(simdir: Path) -> None:
    mpy(
        simdir,
        """
        import camera
        assert camera.init(0, format=camera.JPEG, fb_location=camera.PSRAM) is True
        camera.framesize(camera.FRAME_VGA)
        camera.quality(12)
        for i in range(4):
            b = camera.capture()
            assert type(b) is bytes
            with open("got-%d.jpg" % i, "wb") as f:
                f.write(b)
        assert camera.deinit() is True
        assert camera.capture() is False
        """,
    )
    got = [(simdir / f"got-{i}.jpg").read_bytes() for i in range(4)]
    imgs = images(simdir)
    assert got == imgs + imgs[:1]
    assert captures(simdir) == got
    assert [p.name for p in sorted((simdir / "captures").iterdir())][0] == "000001.jpg"


def test_module_camera_fails_like_the_driver(simdir: Path) -> None:
    out = mpy(
        simdir,
        """
        import camera, os
        camera.init(0, format=camera.JPEG)
        open("/".join((os.getenv("ESPCAM_SIM_DIR"), "ctl", "camera_fail")), "w").close()
        print("capture", camera.capture())
        camera.deinit()
        try:
            camera.init(0, format=camera.JPEG)
        except OSError as e:
            print("init", e)
        """,
    )
    assert "capture False" in out
    assert "init Camera Init Failed" in out
    assert captures(simdir) == []


def test_class_camera_reuses_one_buffer(simdir: Path) -> None:
    write_sim(simdir, "class")
    out = mpy(
        simdir,
        """
        from camera import Camera, FrameSize, PixelFormat, GrabMode
        cam = Camera(pixel_format=PixelFormat.JPEG, frame_size=FrameSize.QVGA,
                     jpeg_quality=80, fb_count=1, grab_mode=GrabMode.WHEN_EMPTY, init=False)
        try:
            cam.capture()
        except OSError:
            print("not initialised")
        cam.init()
        first = cam.capture()
        copy = bytes(first)
        with open("got-0.jpg", "wb") as f:
            f.write(first)
        second = cam.capture()
        with open("got-1.jpg", "wb") as f:
            f.write(second)
        print(type(first).__name__, bytes(first) == copy)
        n = min(len(first), len(second))
        print("overwritten", bytes(first[:n]) == bytes(second[:n]))
        cam.set_quality(55)
        cam.reconfigure(frame_size=FrameSize.VGA)
        print("quality", cam.get_quality())
        cam.deinit()
        """,
    )
    assert "not initialised" in out
    assert "memoryview False" in out
    assert "overwritten True" in out
    assert "quality 55" in out
    got = [(simdir / f"got-{i}.jpg").read_bytes() for i in range(2)]
    assert got == images(simdir)[:2]
    assert captures(simdir) == got


def test_class_camera_failure(simdir: Path) -> None:
    write_sim(simdir, "class")
    out = mpy(
        simdir,
        """
        from camera import Camera, FrameSize, PixelFormat
        import os
        cam = Camera(pixel_format=PixelFormat.JPEG, frame_size=FrameSize.QVGA)
        open("/".join((os.getenv("ESPCAM_SIM_DIR"), "ctl", "camera_fail")), "w").close()
        print("capture", cam.capture())
        cam.deinit()
        try:
            cam.init()
        except OSError as e:
            print("init failed")
        """,
    )
    assert "capture None" in out
    assert "init failed" in out


def test_flash_pin_levels_reach_pins_json(simdir: Path) -> None:
    out = mpy(
        simdir,
        """
        import machine
        led = machine.Pin(4, machine.Pin.OUT, value=0)
        led.on()
        print(open("pins.json").read())
        led.value(0)
        machine.Pin(12, machine.Pin.OUT).value(1)
        machine.Pin(13, machine.Pin.IN)
        """,
    )
    assert json.loads(out.strip()) == {"4": 1}
    assert json.loads((simdir / "pins.json").read_text()) == {"4": 0, "12": 1}


def test_held_pin_ignores_changes_until_released(simdir: Path) -> None:
    mpy(
        simdir,
        """
        import machine
        p = machine.Pin(4, machine.Pin.OUT, value=1, hold=True)
        p.value(0)
        """,
    )
    assert json.loads((simdir / "pins.json").read_text()) == {"4": 1}


def test_motion_is_delivered_by_idle_to_the_rising_edge_handler(simdir: Path) -> None:
    (simdir / "ctl" / "motion").touch()
    out = mpy(
        simdir,
        """
        import machine
        hits = []
        pir = machine.Pin(13, machine.Pin.IN)
        pir.irq(trigger=machine.Pin.IRQ_RISING, handler=lambda p: hits.append(p))
        state = machine.disable_irq()
        machine.enable_irq(state)
        machine.idle()
        machine.idle()
        print("hits", len(hits), hits[0] is pir)
        """,
    )
    assert "hits 1 True" in out
    assert not (simdir / "ctl" / "motion").exists()


def test_reset_cause_wake_reason_and_rtc_memory(simdir: Path) -> None:
    (simdir / "boot.json").write_text(json.dumps({"reset_cause": 4, "wake_reason": 4}))
    out = mpy(
        simdir,
        """
        import machine
        print(machine.reset_cause() == machine.DEEPSLEEP_RESET,
              machine.wake_reason() == machine.TIMER_WAKE)
        r = machine.RTC()
        print(repr(r.memory()))
        r.memory("frame=4")         # str has the buffer protocol: accepted, as on the board
        r.memory(b"frame=41")
        print(repr(machine.RTC().memory()))
        try:
            r.memory(bytes(2049))
        except ValueError:
            print("too long")
        """,
    )
    assert out.split("\n")[:4] == ["True True", "b''", "b'frame=41'", "too long"]
    assert (simdir / "rtc.bin").read_bytes() == b"frame=41"


def test_wlan_connects_and_reports_the_ap_going_away(simdir: Path) -> None:
    out = mpy(
        simdir,
        """
        import network, os
        w = network.WLAN(network.STA_IF)
        print("idle", w.status() == network.STAT_IDLE, w.isconnected())
        w.active(True)
        w.connect("home", "secret")
        print("up", w.isconnected(), w.status() == network.STAT_GOT_IP, w.ifconfig()[0])
        print("rssi", w.status("rssi") < 0, w.config("mac") == b"\\x24\\x0a\\xc4\\x01\\x02\\x03")
        open("/".join((os.getenv("ESPCAM_SIM_DIR"), "ctl", "wifi_down")), "w").close()
        print("down", w.isconnected(), w.status() == network.STAT_NO_AP_FOUND)
        w.disconnect()
        w.connect("home", "wrong")
        os.remove("/".join((os.getenv("ESPCAM_SIM_DIR"), "ctl", "wifi_down")))
        print("badpw", w.isconnected(), w.status() == network.STAT_WRONG_PASSWORD)
        try:
            w.connect("other", "secret")      # the failed attempt is still alive
        except OSError as e:
            print("refused", e)
        w.disconnect()
        w.connect("other", "secret")
        print("noap", w.status() == network.STAT_NO_AP_FOUND)
        """,
    )
    assert out.split("\n")[:7] == [
        "idle True False",
        "up True True 127.0.0.1",
        "rssi True True",
        "down False True",
        "badpw False True",
        "refused Wifi Internal State Error",
        "noap True",
    ]


def test_esp32_and_ntptime(simdir: Path) -> None:
    out = mpy(
        simdir,
        """
        import esp32, machine, ntptime, time
        esp32.wake_on_ext0(pin=machine.Pin(13, machine.Pin.IN), level=esp32.WAKEUP_ANY_HIGH)
        try:
            esp32.wake_on_ext0(machine.Pin(5), esp32.WAKEUP_ANY_HIGH)
        except ValueError:
            print("gpio5 is not an RTC pin")
        esp32.gpio_deep_sleep_hold(True)
        print(type(esp32.raw_temperature()).__name__)
        ntptime.settime()
        before = int(time.time())
        now = ntptime.time()
        print(before <= now <= int(time.time()))  # the host's clock, already right
        """,
    )
    assert out.split("\n")[:3] == ["gpio5 is not an RTC pin", "int", "True"]


def test_make_jpeg_is_a_real_deterministic_jpeg() -> None:
    a = make_jpeg(640, 480, 7, "sim-1 #1")
    assert a == make_jpeg(640, 480, 7, "sim-1 #1")
    assert a != make_jpeg(640, 480, 7, "sim-1 #2")
    img = Image.open(io.BytesIO(a))
    assert (img.format, img.size) == ("JPEG", (640, 480))


def test_jpeg_of_size() -> None:
    data = jpeg_of_size(60_000, seed=3)
    assert abs(len(data) - 60_000) < 3_000
    assert Image.open(io.BytesIO(data)).format == "JPEG"


def test_deepsleep_refuses_more_than_a_32_bit_int_of_ms_like_the_esp32(simdir: Path) -> None:
    out = mpy(
        simdir,
        """
        import machine
        try:
            machine.deepsleep(2 ** 31)
        except OverflowError as e:
            print("refused", e)
        """,
    )
    assert out.startswith("refused overflow converting long int to machine word")
    assert not (simdir / "exit.json").exists()


def test_class_camera_deinit_takes_back_the_held_buffer(simdir: Path) -> None:
    write_sim(simdir, "class")
    out = mpy(
        simdir,
        """
        from camera import Camera, FrameSize, PixelFormat
        cam = Camera(pixel_format=PixelFormat.JPEG, frame_size=FrameSize.QVGA, jpeg_quality=80)
        held = cam.capture()
        copy = bytes(held)
        cam.deinit()
        print("stale", bytes(held) != copy)
        cam.init()
        cam.quality = 42                 # the property of current releases
        print("quality", cam.quality, cam.get_quality())
        cam.set_quality(43)              # the deprecated method still works
        print("quality", cam.quality)
        """,
    )
    assert out.split("\n")[:3] == ["stale True", "quality 42 42", "quality 43"]


def test_module_camera_state_outlives_the_interpreter_until_deinit(simdir: Path) -> None:
    code = """
        import camera
        try:
            print("init", camera.init(0, format=camera.JPEG))
        except OSError as e:
            print("init", e)
        """
    assert mpy(simdir, code).strip() == "init True"
    # A new interpreter (a soft reset) finds the driver still set up by the previous one.
    assert mpy(simdir, code).strip() == "init Camera Init Failed"
    out = mpy(
        simdir,
        """
        import camera
        camera.deinit()
        print("init", camera.init(0, format=camera.JPEG))
        """,
    )
    assert out.strip() == "init True"


def test_a_stuck_camera_fails_only_in_a_boot_after_a_soft_reset(simdir: Path) -> None:
    (simdir / "ctl" / "camera_stuck").touch()
    code = """
        import camera
        camera.deinit()
        try:
            print("init", camera.init(0, format=camera.JPEG))
        except OSError as e:
            print("init", e)
        """
    (simdir / "boot.json").write_text(json.dumps({"reset_cause": 5, "wake_reason": 0}))
    assert mpy(simdir, code).strip() == "init Camera Init Failed"
    (simdir / "boot.json").write_text(json.dumps({"reset_cause": 2, "wake_reason": 0}))
    assert mpy(simdir, code).strip() == "init True"


def test_pir_high_raises_input_pins_and_captures_record_the_flash(simdir: Path) -> None:
    out = mpy(
        simdir,
        """
        import camera, machine, os
        pir = machine.Pin(13, machine.Pin.IN)
        print("pir", pir.value())
        open("/".join((os.getenv("ESPCAM_SIM_DIR"), "ctl", "pir_high")), "w").close()
        print("pir", pir.value())
        camera.init(0, format=camera.JPEG)
        camera.capture()
        machine.Pin(4, machine.Pin.OUT, value=1)
        camera.capture()
        """,
    )
    assert out.split("\n")[:2] == ["pir 0", "pir 1"]
    flash = [json.loads(p.read_text())["flash"]
             for p in sorted((simdir / "captures").glob("*.json"))]
    assert flash == [0, 1]
