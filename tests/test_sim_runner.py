"""SimNode's supervisor, with tiny stand-in apps (not the espcam node app) on real MicroPython:
deep sleep and wake, machine.reset(), the watchdog, crashes, kill and stop."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from espcam.sim.node import SimNode

# Every boot appends "reset_cause wake_reason rtc_memory" to boots.txt on the board.
RECORD = """
import machine
rtc = machine.RTC()
n = len(rtc.memory())
with open("boots.txt", "a") as f:
    f.write("%d %d %d\\n" % (machine.reset_cause(), machine.wake_reason(), n))
rtc.memory(b"x" * (n + 1))
"""


def make_node(tmp_path: Path, main: str, boot: str = "") -> SimNode:
    src = tmp_path / "src"
    src.mkdir()
    (src / "lib").mkdir()
    (src / "main.py").write_text(RECORD + textwrap.dedent(main))
    if boot:
        (src / "boot.py").write_text(textwrap.dedent(boot))
    return SimNode("t-1", tmp_path / "node", "127.0.0.1", 1883, node_src=src)


def boots(node: SimNode) -> list[tuple[int, int, int]]:
    try:
        text = node.board_file("boots.txt").read_text()
    except FileNotFoundError:
        return []
    return [tuple(int(x) for x in line.split()) for line in text.splitlines()]  # type: ignore


@pytest.fixture
def nodes():
    started: list[SimNode] = []
    yield started
    for n in started:
        n.stop()


def test_deep_sleep_timer_wake_keeps_rtc_memory_and_held_pins(tmp_path, nodes) -> None:
    node = make_node(
        tmp_path,
        """
        if n < 3:
            machine.Pin(4, machine.Pin.OUT, value=0, hold=True)
            machine.Pin(12, machine.Pin.OUT, value=1)
            machine.deepsleep(200)
        print("done after", n + 1, "boots")
        """,
    )
    nodes.append(node.start())
    node.wait_status("exited")
    # PWRON then two DEEPSLEEP_RESET/TIMER_WAKE boots; RTC memory grew by one byte per boot
    assert boots(node) == [(1, 0, 0), (4, 4, 1), (4, 4, 2), (4, 4, 3)]
    assert node.boots == 4
    assert "done after 4 boots" in node.log()
    assert node.log().count("=== simulator: boot") == 4


def test_pins_during_deep_sleep_are_the_held_ones(tmp_path, nodes) -> None:
    node = make_node(
        tmp_path,
        """
        machine.Pin(4, machine.Pin.OUT, value=0, hold=True)
        machine.Pin(12, machine.Pin.OUT, value=1)
        machine.deepsleep(600000)
        """,
    )
    nodes.append(node.start())
    node.wait_status("sleeping")
    assert node.pins() == {4: 0}


def test_pin_wake_from_injected_motion(tmp_path, nodes) -> None:
    node = make_node(
        tmp_path,
        """
        import esp32
        if machine.reset_cause() != machine.DEEPSLEEP_RESET:
            esp32.wake_on_ext0(pin=machine.Pin(13, machine.Pin.IN), level=esp32.WAKEUP_ANY_HIGH)
            machine.deepsleep(600000)
        """,
    )
    nodes.append(node.start())
    node.wait_status("sleeping")
    node.inject_motion()
    node.wait_status("exited")
    assert boots(node) == [(1, 0, 0), (4, 2, 1)]  # DEEPSLEEP_RESET, EXT0_WAKE (== PIN_WAKE)


def test_machine_reset_restarts_with_hard_reset(tmp_path, nodes) -> None:
    node = make_node(
        tmp_path,
        """
        if n == 0:
            try:
                machine.reset()
            finally:
                print("unwound")  # the chip resets at once: no finally block runs
        """,
    )
    nodes.append(node.start())
    node.wait_status("exited")
    assert boots(node) == [(1, 0, 0), (2, 0, 1)]  # RTC memory survives a reset
    assert "unwound" not in node.log()


def test_sys_exit_in_main_is_a_soft_reset(tmp_path, nodes) -> None:
    node = make_node(
        tmp_path,
        """
        import sys
        if n == 0:
            sys.exit()
        """,
    )
    nodes.append(node.start())
    node.wait_status("exited")
    assert boots(node) == [(1, 0, 0), (5, 0, 1)]


def test_watchdog_restarts_a_hung_node(tmp_path, nodes) -> None:
    node = make_node(
        tmp_path,
        """
        import time
        wdt = machine.WDT(timeout=1500)
        if n == 0:
            while True:
                time.sleep_ms(50)   # hung: never feeds
        for i in range(40):
            wdt.feed()
            time.sleep_ms(50)       # fed: survives past the timeout (a margin for a busy host)
        print("fed ok")
        """,
    )
    nodes.append(node.start())
    node.wait_status("exited")
    assert boots(node) == [(1, 0, 0), (3, 0, 1)]
    assert "fed ok" in node.log()


def test_crash_is_reported_and_not_restarted(tmp_path, nodes) -> None:
    node = make_node(tmp_path, "raise RuntimeError('boom')\n", boot="raise ValueError('in boot')\n")
    nodes.append(node.start())
    node.wait_status("crashed")
    log = node.log()
    assert "ValueError: in boot" in log  # boot.py failing does not stop main.py
    assert "RuntimeError: boom" in log
    assert node.boots == 1
    assert node.returncode == 1


def test_power_on_clears_rtc_memory_but_keeps_board_files(tmp_path, nodes) -> None:
    node = make_node(tmp_path, "")
    nodes.append(node)
    node.start().wait_status("exited")
    node.start().wait_status("exited")
    assert boots(node) == [(1, 0, 0), (1, 0, 0)]


def test_kill_and_stop_end_the_process(tmp_path, nodes) -> None:
    node = make_node(
        tmp_path,
        """
        import time
        while True:
            machine.idle()
            time.sleep_ms(20)
        """,
    )
    nodes.append(node.start())
    node.wait_for(lambda: boots(node))
    proc = node.process
    node.kill()
    assert proc is not None and proc.poll() is not None
    assert node.status == "stopped"
    node.start()
    node.wait_for(lambda: len(boots(node)) == 2)
    proc = node.process
    node.stop()
    assert proc is not None and proc.poll() is not None
    assert node.status == "stopped"


def test_soft_reset_restarts_the_interpreter_and_keeps_rtc_memory(tmp_path, nodes) -> None:
    node = make_node(
        tmp_path,
        """
        import time
        while n == 0:
            time.sleep_ms(20)
        """,
    )
    nodes.append(node.start())
    node.wait_for(lambda: boots(node))
    node.soft_reset()
    node.wait_status("exited")
    assert boots(node) == [(1, 0, 0), (5, 0, 1)]


def test_a_level_high_ext0_wakes_at_once_while_the_pir_is_high(tmp_path, nodes) -> None:
    node = make_node(
        tmp_path,
        """
        import esp32
        if n == 0:
            esp32.wake_on_ext0(pin=machine.Pin(13, machine.Pin.IN), level=esp32.WAKEUP_ANY_HIGH)
            machine.deepsleep(600000)
        """,
    )
    node.pir_high(True)
    nodes.append(node.start())
    node.wait_status("exited")
    assert boots(node) == [(1, 0, 0), (4, 2, 1)]
    assert node.sleeps == [{"ms": 600000, "ext0": 13, "held": {}}]
