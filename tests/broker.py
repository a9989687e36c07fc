"""A real Mosquitto for tests: its own config, a free loopback port, a temp directory."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from polling import stop_process, wait_listening

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_CONF = ROOT / "deploy" / "mosquitto" / "protocol.conf"


def mosquitto_binary() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and Path(cand).exists():
            return cand
    raise RuntimeError("mosquitto is not installed: run ./scripts/setup.sh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """Mosquitto on 127.0.0.1:<port>; `extra` is appended to the generated config."""

    def __init__(self, workdir: Path, extra: str = "", port: int | None = None) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def write_config(self) -> Path:
        conf = self.dir / "mosquitto.conf"
        has_auth = "password_file" in self.extra or "allow_anonymous" in self.extra
        # Run as root, Mosquitto drops to the `mosquitto` user, which cannot write the test's
        # private temp directory (log, persistence); keep root for the test broker.
        as_root = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            as_root
            + f"listener {self.port} 127.0.0.1\n"
            + ("" if has_auth else "allow_anonymous true\n")
            + f"persistence_location {self.dir}/\n"
            + f"log_dest file {self.log}\n"
            + "log_type all\n"
            + PROTOCOL_CONF.read_text()
            + self.extra
            + "\n"
        )
        return conf

    def start(self) -> Broker:
        conf = self.write_config()
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "mosquitto.stderr", "ab"),
        )
        wait_listening(self.host, self.port, self.proc,
                       lambda: (self.dir / "mosquitto.stderr").read_text())
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
