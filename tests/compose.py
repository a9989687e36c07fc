"""docker-compose.yml without Docker, for tests: read the compose file and run its pieces on
this machine the way compose would, changing only paths and ports.

- mosquitto: the real Mosquitto with the mounted mosquitto.conf, its container paths pointed at a
  copy of the mounted directory and at a folder for each named volume, its listener moved to a
  free loopback port. As in the image, it runs as uid and gid 1883, not root (when the tests run
  as root; otherwise as the user running them), so it reads the password and ACL files only if
  their permissions let the broker's group read them, and the data volume belongs to 1883 as
  the image's entrypoint makes it;
- backend: the service's command with its environment (${VAR} from the env file, $$ a $), the
  broker address pointed at that port and the data volume at a folder; `espcam` is the one
  installed beside this Python.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from broker import free_port, mosquitto_binary
from polling import wait_listening

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each volume of a service (short syntax)."""
    out = []
    for v in service.get("volumes", []):
        parts = v.split(":")
        out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def substitute(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, and $$ for a literal $."""
    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\$|\$\{(\w+)(:[-?])?([^}]*)\}", one, value)


BROKER_UID = BROKER_GID = 1883  # the mosquitto user of the eclipse-mosquitto image
AS_ROOT = os.geteuid() == 0


class ComposeStack:
    def __init__(self, workdir: Path) -> None:
        if AS_ROOT:
            # The broker runs as uid 1883, which cannot enter pytest's private temp directory:
            # the stack lives in a directory of its own that others may enter (not read).
            self.own_dir: Path | None = Path(tempfile.mkdtemp(prefix="espcam-compose-"))
            self.own_dir.chmod(0o711)
            workdir = self.own_dir / "stack"
        else:
            self.own_dir = None
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True)
        self.dir.chmod(0o711)
        self.compose = load()
        self.port = free_port()
        self.host = "127.0.0.1"
        self.paths: dict[str, Path] = {}  # container path -> where it is here
        self.procs: list[subprocess.Popen] = []
        for source, target, _ro in mounts(self.compose["services"]["mosquitto"]):
            if source.startswith("."):
                # A copy of the mounted directory: the test writes its passwd there, not in
                # the repository.
                here = self.dir / "mosquitto-config"
                shutil.copytree(ROOT / source, here)
            else:
                here = self.dir / "volumes" / source
                here.mkdir(parents=True)
                if AS_ROOT and source == "mosquitto-data":  # the image's entrypoint does this
                    os.chown(here, BROKER_UID, BROKER_GID)
            self.paths[target] = here
        self.config_dir = self.paths["/mosquitto/config"]
        self.env_file = self.dir / ".env"
        self.data_dir = self.dir / "volumes" / "espcam-data"

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def local(self, text: str, paths: dict[str, Path]) -> str:
        for target, here in sorted(paths.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(target, str(here))
        return text

    def start_broker(self) -> None:
        conf = self.local((self.config_dir / "mosquitto.conf").read_text(), self.paths)
        conf = re.sub(r"^listener 1883$", f"listener {self.port} {self.host}", conf, flags=re.M)
        path = self.dir / "mosquitto.conf"
        path.write_text(conf)
        path.chmod(0o644)
        log = open(self.dir / "mosquitto.log", "ab")
        # As the image runs it: uid and gid 1883, no other groups (so not root's).
        who = {"user": BROKER_UID, "group": BROKER_GID, "extra_groups": []} if AS_ROOT else {}
        proc = subprocess.Popen([mosquitto_binary(), "-c", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, **who)
        self.procs.append(proc)
        wait_listening(self.host, self.port, proc,
                       lambda: (self.dir / "mosquitto.log").read_text())

    def env_values(self) -> dict[str, str]:
        out = {}
        for line in self.env_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                out[key.strip()] = value.strip()
        return out

    def backend_env(self) -> dict[str, str]:
        """The backend service's environment as compose gives it, for this machine."""
        service = self.compose["services"]["backend"]
        values = self.env_values()
        env = {k: substitute(str(v), values) for k, v in service["environment"].items()}
        env["ESPCAM_BROKER"] = env["ESPCAM_BROKER"].replace("mosquitto:1883", self.url)
        data_target = next(t for s, t, _ in mounts(service) if s == "espcam-data")
        env["ESPCAM_DATA_DIR"] = env["ESPCAM_DATA_DIR"].replace(data_target, str(self.data_dir))
        base = {k: v for k, v in os.environ.items() if not k.startswith("ESPCAM_")}
        # `espcam` (also in the service's shell commands) is the one beside this Python.
        base["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
        return base | env

    def start_backend(self) -> subprocess.Popen:
        cmd = [substitute(str(a), {}) for a in self.compose["services"]["backend"]["command"]]
        log = open(self.dir / "backend.log", "ab")
        proc = subprocess.Popen(cmd, env=self.backend_env(), stdout=log,
                                stderr=subprocess.STDOUT, cwd=self.dir)
        self.procs.append(proc)
        return proc

    def healthcheck(self) -> subprocess.CompletedProcess:
        """The backend's healthcheck, as Docker runs it in the container."""
        test = [substitute(str(a), {}) for a in
                self.compose["services"]["backend"]["healthcheck"]["test"]]
        argv = {"CMD": test[1:], "CMD-SHELL": ["sh", "-c", *test[1:]]}[test[0]]
        return subprocess.run(argv, env=self.backend_env(), capture_output=True, text=True,
                              timeout=60)

    def exec(self, *args: str) -> subprocess.CompletedProcess:
        """`docker compose exec backend espcam ARGS`: a command in the backend's environment."""
        return subprocess.run(["espcam", *args], env=self.backend_env(), capture_output=True,
                              text=True, timeout=60, cwd=self.dir)

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.own_dir is not None:
            shutil.rmtree(self.own_dir, ignore_errors=True)
