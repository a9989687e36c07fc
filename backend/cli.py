"""The backend's subcommands of `espcam` (espcam/cli.py dispatches to them): run the backend,
command nodes, list nodes and stored frames.

Exit codes (docs/backend.md): 0 done, 1 error (broker unreachable, storage), 2 bad usage or
configuration, 3 refused by the node, 4 queued (node asleep or offline), 5 no answer in time.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from espcam.backend import brokerusers, facescli
from espcam.backend import config as config_mod
from espcam.backend.documents import SETTINGS, CommandError, build_command
from espcam.backend.names import check_node_id

if TYPE_CHECKING:
    from espcam.backend.framestorage import FrameStorage

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED, EXIT_QUEUED, EXIT_NO_ANSWER = range(6)


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection and data (win over ESPCAM_* and the config file)")
    g.add_argument("--broker", metavar="HOST:PORT", help="MQTT broker (default localhost:1883)")
    g.add_argument("--data-dir", metavar="DIR", help="where frames and the index live")
    g.add_argument("--config", metavar="FILE", help="TOML config file (or ESPCAM_CONFIG)")
    g.add_argument("--prefix", help="topic prefix (default espcam)")
    g.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="how long to wait for a node's ack (default 10)")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def node_arg(value: str) -> str:
    try:
        return check_node_id(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """key=value for `espcam config`, with the value typed as the setting requires."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    spec = SETTINGS.get(key)
    if spec is None:
        raise argparse.ArgumentTypeError(f"unknown setting {key!r}; known: {', '.join(SETTINGS)}")
    value: Any = raw
    if spec.type == "int":
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key} must be an integer, not {raw!r}") from None
    elif spec.type == "bool":
        if raw.lower() not in ("true", "false", "on", "off", "1", "0"):
            raise argparse.ArgumentTypeError(f"{key} must be true or false, not {raw!r}")
        value = raw.lower() in ("true", "on", "1")
    return key, value


def parse_since(text: str) -> float:
    """'2025-11-24', '2025-11-24T13:00', or an age: '90s', '30m', '6h', '2d'."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if m:
        return time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[
            m.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r}: use an ISO date/time or an age like 30m, 6h, 2d") from None


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The backend's subcommands, added to espcam's command line."""

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        return p

    add("serve", "run the backend: receive, verify and store frames")
    p = add("capture", "ask a node to capture a frame now")
    p.add_argument("node", type=node_arg)
    p.add_argument("--wait-frame", action="store_true",
                   help="also wait until the frame is stored and print its path")
    p = add("flash", "drive a node's flash LED")
    p.add_argument("node", type=node_arg)
    p.add_argument("state", choices=("on", "off", "pulse"))
    p.add_argument("--ms", type=int, help="pulse length, 1 ... 5000 ms (default 200)")
    p = add("sleep", "put a node into deep sleep")
    p.add_argument("node", type=node_arg)
    p.add_argument("seconds", type=int)
    p = add("config", "change node settings: key=value ...")
    p.add_argument("node", type=node_arg)
    p.add_argument("settings", nargs="+", type=parse_assignment, metavar="key=value")
    p = add("reboot", "reset a node")
    p.add_argument("node", type=node_arg)
    p = add("status", "ask a node to republish its state and print it")
    p.add_argument("node", type=node_arg)
    p = add("nodes", "list known nodes (from the data directory's index)")
    p.add_argument("--json", action="store_true")
    p = add("forget", "remove a node from Home Assistant and the backend's live state")
    p.add_argument("node", type=node_arg)
    p.add_argument("--delete-frames", action="store_true",
                   help="also delete its stored frames (kept by default)")
    add("health", "exit 0 if the backend is online, current and its storage works")
    p = add("frames", "list a node's stored frames")
    p.add_argument("node", type=node_arg)
    p.add_argument("--since", type=parse_since, help="ISO date/time or age (30m, 6h, 2d)")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--person", metavar="NAME",
                   help="only frames showing this enrolled person (`unknown`: a face that "
                   "matched no one)")
    p.add_argument("--motion", action="store_true",
                   help="only frames with motion over the node's threshold")
    p.add_argument("--json", action="store_true")
    brokerusers.add_arguments(sub, _common)
    facescli.add_arguments(sub, _common)


def load_settings(args: argparse.Namespace) -> config_mod.Settings:
    return config_mod.load(args.config, overrides={
        "broker": args.broker, "data_dir": args.data_dir, "prefix": args.prefix,
        "command_timeout": args.timeout,
    })


def cmd_serve(settings: config_mod.Settings) -> int:
    from espcam.backend.storage import StorageError, describe_os_error
    from espcam.backend.subscriber import Backend

    try:
        backend = Backend(settings)
    except StorageError as e:
        print(f"espcam: {e.strerror}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"espcam: cannot use data directory {settings.data_dir}: "
              f"{describe_os_error(e)}", file=sys.stderr)
        return EXIT_ERROR

    def stop(signum: int, frame: Any) -> None:
        backend.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backend.run()
    return EXIT_OK


def cmd_node_command(args: argparse.Namespace, settings: config_mod.Settings) -> int:
    from espcam.backend.commands import CommandClient, Outcome
    from espcam.backend.session import BrokerUnreachable

    kw: dict[str, Any] = {}
    if args.command == "flash":
        kw = {"state": args.state, "ms": args.ms}
    elif args.command == "sleep":
        kw = {"seconds": args.seconds}
    elif args.command == "config":
        kw = {"set": dict(args.settings)}
    try:
        doc = build_command(args.command, **kw)
    except CommandError as e:
        print(f"espcam: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with CommandClient(settings, args.node) as c:
            result = c.send(doc, wait_frame=getattr(args, "wait_frame", False))
    except BrokerUnreachable as e:
        print(f"espcam: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(result.message)
    if args.command == "status" and result.state is not None:
        print(json.dumps(result.state, indent=2))
    return {
        Outcome.DONE: EXIT_OK,
        Outcome.REFUSED: EXIT_REFUSED,
        Outcome.QUEUED: EXIT_QUEUED,
        Outcome.NO_ANSWER: EXIT_NO_ANSWER,
    }[result.outcome]


def _open_storage(settings: config_mod.Settings) -> FrameStorage | None:
    """The index, read-only: listing never writes, so it works on a read-only data
    directory and next to a running `espcam serve`."""
    from espcam.backend.openstorage import open_storage
    from espcam.backend.storage import INDEX_NAME, StorageError

    if not (Path(settings.data_dir) / INDEX_NAME).is_file():
        print(f"espcam: no index in {settings.data_dir} (has `espcam serve` run with this "
              "--data-dir?)", file=sys.stderr)
        return None
    try:
        return open_storage(settings, readonly=True)
    except StorageError as e:
        print(f"espcam: {e.strerror}", file=sys.stderr)
        return None


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def cmd_nodes(args: argparse.Namespace, settings: config_mod.Settings) -> int:
    storage = _open_storage(settings)
    if storage is None:
        return EXIT_ERROR
    try:
        rows = storage.nodes()
    except sqlite3.Error as e:
        print(f"espcam: cannot read the index in {storage.root}: {e}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        storage.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'NODE':<20} {'AVAILABILITY':<12} {'LAST SEEN':<19}  {'FRAME':>8}  SETTINGS")
    for r in rows:
        settings_doc = (r["state"] or {}).get("settings") or {}
        shown = " ".join(f"{k}={v}" for k, v in settings_doc.items())
        print(f"{r['node']:<20} {r['availability'] or '-':<12} {_when(r['last_seen']):<19}  "
              f"{r['last_frame'] if r['last_frame'] is not None else '-':>8}  {shown}")
    return EXIT_OK


def cmd_frames(args: argparse.Namespace, settings: config_mod.Settings) -> int:
    from espcam.backend import findings

    storage = _open_storage(settings)
    if storage is None:
        return EXIT_ERROR
    root = storage.root
    try:
        if args.person is not None or args.motion:
            frames = findings.frames(storage.index, args.node, args.since, args.limit,
                                     person=args.person, motion=args.motion)
        else:
            frames = storage.frames(args.node, since=args.since, limit=args.limit)
        found = [findings.get(storage.index, f) for f in frames]
    except sqlite3.Error as e:
        print(f"espcam: cannot read the index in {root}: {e}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        storage.close()
    if args.json:
        print(json.dumps([f.as_dict() | {"file": storage.locate(f),
                                         "analysis": _analysis(a)}
                          for f, a in zip(frames, found, strict=True)], indent=2))
        return EXIT_OK
    for f, a in zip(frames, found, strict=True):
        print(f"{f.frame_id:>10}  {_when(f.captured_at or f.received_at)}  {f.bytes:>8} B  "
              f"{f.width}x{f.height}  {f.trigger or '-':<9} {storage.locate(f)}"
              + (f"  {_summary(a)}" if a is not None else ""))
    return EXIT_OK


def _analysis(a: Any) -> dict[str, Any] | None:
    if a is None:
        return None
    return {"motion": a.motion, "moved": a.moved, "motion_box": a.motion_box,
            "faces": a.faces, "people": a.names}


def _summary(a: Any) -> str:
    motion = "-" if a.motion is None else f"{a.motion:.1f}%" + ("*" if a.moved else "")
    return f"motion {motion}" + (f"  {', '.join(a.names)}" if a.faces else "")


def cmd_forget(args: argparse.Namespace, settings: config_mod.Settings) -> int:
    from espcam.backend.forget import forget
    from espcam.backend.session import BrokerUnreachable

    try:
        result = forget(settings, args.node, delete_frames=args.delete_frames)
    except BrokerUnreachable as e:
        print(f"espcam: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(result.message)
    return EXIT_OK if result.done else EXIT_QUEUED


def cmd_health(settings: config_mod.Settings) -> int:
    from espcam.backend.health import check
    from espcam.backend.session import BrokerUnreachable

    try:
        ok, why = check(settings)
    except BrokerUnreachable as e:
        ok, why = False, str(e)
    print(f"backend {'healthy' if ok else 'unhealthy'}: {why}")
    return EXIT_OK if ok else EXIT_ERROR


def run(args: argparse.Namespace) -> int:
    """Run one parsed backend subcommand."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings(args)
    except config_mod.ConfigError as e:
        print(f"espcam: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not args.verbose:
        logging.getLogger().setLevel(settings.log_level.upper())
    if args.command == "serve":
        return cmd_serve(settings)
    if args.command == "nodes":
        return cmd_nodes(args, settings)
    if args.command == "frames":
        return cmd_frames(args, settings)
    if args.command == "forget":
        return cmd_forget(args, settings)
    if args.command == "health":
        return cmd_health(settings)
    if hasattr(args, "func"):
        return int(args.func(args, settings) or 0)
    return cmd_node_command(args, settings)
