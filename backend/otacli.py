"""`espcam ota NODE... | --all`: update nodes' app over MQTT (docs/deploy.md, "Over the air").

Packs the app as `espcam deploy` does (espcam.provision.package), stores the package in the
backend's data directory, signs an offer for each node with the node's own key (`ota_key` in
the config `espcam provision` wrote, deploy/nodes/NODE.json), and tells the backend on
`<prefix>/_backend/ota`, which publishes the offers (retained: a sleeping node finds its offer
when it wakes) and serves the pieces. With --stage the update only shows in Home Assistant,
to be installed from there. With --wait, follows each node's status until it is done.
So it runs where the backend's data directory is (beside `espcam serve`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from espcam.backend.config import Settings
from espcam.backend.names import check_node_id
from espcam.backend.otapack import DEADLINE, TERMINAL, NodeRecord, store_package
from espcam.backend.protocol import backend_topic
from espcam.backend.session import BrokerUnreachable, Session

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED, EXIT_QUEUED, EXIT_NO_ANSWER = range(6)


def add_arguments(sub: argparse._SubParsersAction,
                  common: Callable[[argparse.ArgumentParser], None]) -> None:
    text = "update nodes' app over MQTT, signed for each node, with rollback"
    p = sub.add_parser("ota", help=text, description=text)
    common(p)
    p.add_argument("nodes", nargs="*", metavar="NODE")
    p.add_argument("--all", action="store_true",
                   help="every node whose config in --keys has an ota_key")
    p.add_argument("--from", dest="src", type=Path, metavar="DIR",
                   help="the node app to send (default: this espcam's node/)")
    p.add_argument("--keys", type=Path, metavar="DIR",
                   help="the nodes' configs from `espcam provision` (default deploy/nodes)")
    p.add_argument("--no-compile", action="store_true",
                   help="send the .py files instead of compiling them with mpy-cross")
    p.add_argument("--summary", default="", help="release notes shown in Home Assistant")
    p.add_argument("--stage", action="store_true",
                   help="only make the update available (Home Assistant's Install sends it)")
    p.add_argument("--deadline", type=int, default=DEADLINE, metavar="SECONDS",
                   help="time the new app has to reach the broker before the node goes back "
                   f"to the previous one (default {DEADLINE})")
    p.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                   help="follow the nodes' status until done, at most this long")
    p.set_defaults(func=run)


def keys_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    from espcam.provision.provisioning import DEFAULT_NODES_DIR

    if DEFAULT_NODES_DIR is None:
        raise ValueError("no checkout here: give --keys DIR (the configs espcam provision "
                         "wrote)")
    return DEFAULT_NODES_DIR


def node_key(keys: Path, node: str) -> str:
    try:
        cfg = json.loads((keys / f"{node}.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"no config for {node} in {keys}: {e}") from None
    key = cfg.get("ota_key")
    if not isinstance(key, str) or len(key) < 32:
        raise ValueError(f"{node} has no ota_key in {keys}/{node}.json: run `espcam provision "
                         f"{node} --rotate` and deploy it over USB once")
    return key


def retained_states(s: Session, prefix: str, nodes: list[str], timeout: float) -> dict[str, Any]:
    """The nodes' retained state documents (for their MicroPython version)."""
    s.subscribe(*[f"{prefix}/{n}/state" for n in nodes])
    states: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while len(states) < len(nodes) and (msg := s.next(deadline)) is not None:
        try:
            states[msg.topic.split("/")[-2]] = json.loads(msg.payload)
        except ValueError:
            continue
    return states


def run(args: argparse.Namespace, settings: Settings) -> int:
    from espcam.provision.errors import ProvisionError
    from espcam.provision.package import NODE_SRC, app_files, app_version

    try:
        keys = keys_dir(args.keys)
        nodes = [check_node_id(n) for n in args.nodes]
        if args.all:
            for p in sorted(keys.glob("*.json")):
                try:
                    if p.stem not in nodes:
                        node_key(keys, p.stem)
                        nodes.append(p.stem)
                except ValueError as e:
                    print(f"skipped: {e}", file=sys.stderr)
        if not nodes:
            print("espcam ota: name the nodes, or --all", file=sys.stderr)
            return EXIT_USAGE
        signing = {n: node_key(keys, n) for n in nodes}
    except ValueError as e:
        print(f"espcam ota: {e}", file=sys.stderr)
        return EXIT_USAGE
    src = args.src or NODE_SRC
    root = Path(settings.data_dir) / "ota"
    prefix = settings.prefix
    try:
        with Session(settings, "ota") as s:
            fw = None
            if not args.no_compile:
                states = retained_states(s, prefix, nodes, min(settings.command_timeout, 3.0))
                fws = {st.get("fw") for st in states.values() if isinstance(st, dict)}
                if len(fws) > 1:
                    print(f"espcam ota: the nodes run different MicroPython versions "
                          f"({', '.join(sorted(map(str, fws)))}): update them in groups",
                          file=sys.stderr)
                    return EXIT_USAGE
                fw = next(iter(fws), None)
            files = app_files(src, not args.no_compile, fw)
            pkg = store_package(root, app_version(src), args.summary, files)
            print(f"package {pkg.id}: {len(files)} files, {pkg.size} bytes, app {pkg.version}")
            for node in nodes:
                rec = NodeRecord.load(root, node)
                rec.package, rec.version, rec.summary = pkg.id, pkg.version, args.summary
                rec.offer = pkg.offer(node, signing[node], args.deadline)
                rec.offered, rec.state, rec.progress, rec.error = False, "staged", None, None
                rec.save(root)
            s.subscribe(*[f"{prefix}/{n}/{leaf}" for n in nodes for leaf in ("ota/status", "ack")])
            s.publish(backend_topic(prefix, "ota"),
                      json.dumps({"nodes": nodes, "install": not args.stage}))
            verb = "staged for Home Assistant's Install" if args.stage else "offered"
            print(f"{verb}: {', '.join(nodes)}")
            if not args.wait or args.stage:
                return EXIT_OK
            return follow(s, prefix, pkg.id, nodes, args.wait)
    except ProvisionError as e:
        print(f"espcam ota: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokerUnreachable as e:
        print(f"espcam ota: {e}", file=sys.stderr)
        return EXIT_ERROR


def follow(s: Session, prefix: str, pid: str, nodes: list[str], wait: float) -> int:
    left = set(nodes)
    failed = False
    deadline = time.monotonic() + wait
    while left and (msg := s.next(deadline)) is not None:
        node = msg.topic[len(prefix) + 1:].split("/")[0]
        try:
            d = json.loads(msg.payload)
        except ValueError:
            continue
        if not isinstance(d, dict) or d.get("id") != pid:
            continue
        if msg.topic.endswith("/ack"):
            if d.get("cmd") != "update" or d.get("ok"):
                continue
            d = {"state": "refused", "error": f"{d.get('code')}: {d.get('error')}"}
        state = d.get("state")
        if state in TERMINAL:
            left.discard(node)
            failed |= state != "done"
            err = f": {d.get('error')}" if d.get("error") else ""
            print(f"{node}: {state} (running {d.get('installed')}){err}")
        elif state == "downloading":
            print(f"{node}: downloading {d.get('progress')}%")
    for node in sorted(left):
        print(f"{node}: no outcome yet (asleep or offline: it updates when it is back)")
    return EXIT_REFUSED if failed else EXIT_QUEUED if left else EXIT_OK
