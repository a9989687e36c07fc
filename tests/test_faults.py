"""The fault suite's short form (faults/, docs/reliability.md): each test runs one fault of
`python -m faults --quick` for real (Mosquitto, `espcam serve` as a process, simulated
MicroPython nodes) and checks the campaign's count of every node: captured = stored + counted
lost, and, the spool being on, every frame stored except one the fault loses on purpose and
the node reports. Packet loss and the storage stall need root (a network namespace, iptables,
a file system to freeze); without root they are skipped with the campaign's reason."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
POWER_LOST_WRITING = "dropped by the node: power lost while saving it"


def run_fault(name: str, tmp_path: Path) -> dict:
    out = tmp_path / "faults.json"
    p = subprocess.run([sys.executable, "-m", "faults", "--quick", "--only", name, "--json",
                        str(out), "--workdir", str(tmp_path / "work")],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    if not out.exists():
        pytest.fail(f"the campaign wrote no figures (exit {p.returncode}):\n{p.stdout}\n"
                    f"{p.stderr}")
    (res,) = json.loads(out.read_text())["faults"]
    if res["skipped"]:
        pytest.skip(res["skipped"])
    res["output"] = p.stdout + p.stderr
    res["exit"] = p.returncode
    return res


def check(res: dict, lost_on_purpose: int = 0) -> None:
    assert res["nodes"], res["output"]
    for n in res["nodes"]:
        assert n["captured"] > 0, res["output"]
        assert n["holds"] and not n["problems"] and not n["uncounted"], res["output"]
        assert n["captured"] == n["stored"] + n["lost"], res["output"]
    assert sum(n["lost"] for n in res["nodes"]) == lost_on_purpose, res["output"]
    assert res["ok"] and res["exit"] == 0, res["output"]


def test_a_home_server_power_cut_loses_no_frame(tmp_path):
    # Backend SIGKILL, then broker SIGKILL while the nodes capture; both restarted.
    res = run_fault("home-server-power-cut", tmp_path)
    check(res)
    assert len(res["nodes"]) == 2 and all(n["spool"] == "ram" for n in res["nodes"])
    assert "backend started 2 times" in res["notes"], res["output"]


def test_a_node_power_cut_in_the_middle_of_a_frame_loses_nothing_with_the_sd_spool(tmp_path):
    res = run_fault("node-cut-mid-frame", tmp_path)
    check(res)
    cuts = [n for n in res["notes"] if re.search(r"lost power in frame \d+ after \d+ of", n)]
    assert len(cuts) == 2, res["output"]
    assert all(n["spool"] == "sd" for n in res["nodes"])


def test_a_node_power_cut_while_writing_a_frame_to_the_card_loses_that_frame_counted(
        tmp_path):
    res = run_fault("node-cut-spool-write", tmp_path)
    check(res, lost_on_purpose=1)
    (node,) = res["nodes"]
    assert node["lost_reasons"] == {POWER_LOST_WRITING: 1}, res["output"]
    assert node["stored"] == node["captured"] - 1


def test_five_percent_packet_loss_loses_nothing(tmp_path):
    res = run_fault("packet-loss", tmp_path)
    check(res)
    dropped = [int(m.group(1)) for note in res["notes"]
               if (m := re.search(r"iptables dropped (\d+) packets", note))]
    assert dropped and dropped[0] > 0, res["output"]


def test_a_storage_stall_keeps_the_backend_connected_and_loses_nothing(tmp_path):
    # The backend's disk frozen (fsfreeze) for 15 s here and 120 s in the full campaign: the
    # same mechanism, as the backend's session has no keepalive to miss however long it lasts
    # (tests/test_backend_confirm.py checks that the broker holds none against it).
    res = run_fault("storage-stall", tmp_path)
    check(res)
    assert "the backend stayed connected through the stall" in res["notes"], res["output"]
