"""A network namespace of the campaign's own, so that its iptables rules (packet loss, a cut
link) touch nothing on the host: `ip netns add`, its loopback up, and the campaign run again
inside it with `ip netns exec`. Broker, backend and nodes then talk over that loopback only.

The simulated radio link of each node is its relay (sim/linkproxy.py) on 127.0.0.1:<port>:
the rules match those ports, in both directions, in one chain of ours (ESPCAM_LINK), so the
backend's own connection to the broker is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CHAIN = "ESPCAM_LINK"
ENV = "FAULTS_NETNS"  # set inside: the namespace's name


def is_root() -> bool:
    return os.geteuid() == 0


def _tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if Path(p).exists()), None)


def missing_tools() -> list[str]:
    """Debian packages the network faults need that are not installed."""
    out = []
    if _tool("ip") is None:
        out.append("iproute2")
    if _tool("iptables") is None:
        out.append("iptables")
    return out


def what_root_needs() -> str:
    return ("packet loss and link cuts are iptables rules, and the full disk a tmpfs, inside a "
            "network namespace of the campaign's own (ip netns): that needs root, iproute2 and "
            "iptables (./scripts/setup.sh installs both when run as root). Run it as root, "
            "e.g. sudo .venv/bin/python -m faults")


def inside() -> str | None:
    return os.environ.get(ENV)


def run_inside(argv: list[str]) -> int:
    """Runs `python -m faults argv` in a new namespace and removes the namespace after, with
    anything of ours still running in it. Returns the campaign's exit status."""
    ip = _tool("ip")
    assert ip is not None
    name = f"espcam-faults-{os.getpid()}"
    made = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        print(f"faults: cannot make a network namespace ({made.stderr.strip()}); "
              + what_root_needs(), file=sys.stderr)
        return 2
    try:
        # Wi-Fi's MTU, not loopback's 64 KB: a 4 KB chunk is then three packets, as on the
        # air, and each can be the one dropped.
        subprocess.run([ip, "netns", "exec", name, ip, "link", "set", "lo", "mtu", "1500", "up"],
                       check=True)
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, ENV: name,
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        try:
            return subprocess.call([ip, "netns", "exec", name, sys.executable, "-m", "faults",
                                    *argv], env=env, cwd=root)
        except KeyboardInterrupt:
            return 130
    finally:
        # Whatever of the campaign is left in the namespace (it cleans up after itself; this
        # is for a campaign killed outright) goes with it.
        pids = subprocess.run([ip, "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ValueError, ProcessLookupError):
                pass
        subprocess.run([ip, "netns", "delete", name], capture_output=True)


def iptables(*args: str) -> None:
    tool = _tool("iptables")
    if tool is None:
        raise RuntimeError("iptables is missing: " + what_root_needs())
    subprocess.run([tool, "-w", *args], check=True, capture_output=True, text=True)


class Link:
    """The nodes' radio links inside the namespace: lossy, cut, or clear."""

    def __init__(self) -> None:
        if not inside():
            raise RuntimeError("link faults run only inside the campaign's namespace")
        # One chain for the whole campaign: made by the first fault that needs it, emptied
        # after each.
        if not _ok("-L", CHAIN, "-n"):
            iptables("-N", CHAIN)
        if not _ok("-C", "INPUT", "-i", "lo", "-j", CHAIN):
            iptables("-I", "INPUT", "-i", "lo", "-j", CHAIN)

    def _rules(self, ports: list[int], extra: list[str]) -> None:
        # multiport takes at most 15 ports a rule; --ports matches source or destination.
        for i in range(0, len(ports), 15):
            group = ",".join(map(str, ports[i:i + 15]))
            iptables("-A", CHAIN, "-p", "tcp", "-m", "multiport", "--ports", group, *extra,
                     "-j", "DROP")

    def lossy(self, ports: list[int], probability: float) -> None:
        """Each packet on these links dropped with this probability, either way."""
        self._rules(ports, ["-m", "statistic", "--mode", "random", "--probability",
                            f"{probability:.4f}"])

    def cut(self, ports: list[int]) -> None:
        """Every packet on these links dropped: no RST, no FIN, as a link that went silent."""
        self._rules(ports, [])

    def clear(self) -> None:
        iptables("-F", CHAIN)

    def dropped(self) -> str:
        """How many packets the rules dropped since the last clear(), as a sentence."""
        tool = _tool("iptables")
        assert tool is not None
        out = subprocess.run([tool, "-w", "-L", CHAIN, "-n", "-v", "-x"], capture_output=True,
                             text=True).stdout
        total = 0
        for line in out.splitlines()[2:]:
            fields = line.split()
            if fields and fields[0].isdigit():
                total += int(fields[0])
        return f"iptables dropped {total} packets on the nodes' links" if total else ""


def _ok(*args: str) -> bool:
    tool = _tool("iptables")
    return tool is not None and subprocess.run(
        [tool, "-w", *args], capture_output=True).returncode == 0
