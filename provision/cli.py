"""The provisioning subcommands of `espcam`: flash-firmware, deploy, provision, console."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from espcam.provision.board import port_hint
from espcam.provision.errors import ProvisionError

ENV_PORT = "ESPCAM_PORT"


def _port(args: argparse.Namespace) -> str:
    port = args.port or os.environ.get(ENV_PORT)
    if not port:
        raise ProvisionError(f"give --port (or set {ENV_PORT}); {port_hint()}")
    return port


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    # One place that turns a ProvisionError into a message and exit status 1 (no traceback).
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ProvisionError as e:
            print(f"espcam {args.command_name}: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"espcam {args.command_name}: interrupted", file=sys.stderr)
            return 130

    return run


def cmd_flash(args: argparse.Namespace) -> int:
    from espcam.provision.firmware import FlashOptions, flash

    opts = FlashOptions(_port(args), Path(args.firmware), args.chip, args.baud, args.erase)
    return flash(opts)


def cmd_deploy(args: argparse.Namespace) -> int:
    from espcam.provision import nodeconfig
    from espcam.provision.deploy import Options, deploy
    from espcam.provision.watchlogin import watch_login

    cfg: dict[str, Any] | None = None
    given = [args.node_id, args.wifi_ssid, args.broker, args.mqtt_user, args.config]
    if args.keep_config:
        if any(v is not None for v in given):
            raise ProvisionError("--keep-config cannot be combined with config values")
    else:
        base = nodeconfig.load(Path(args.config)) if args.config else None
        cfg = nodeconfig.build(
            base,
            node_id=args.node_id,
            wifi_ssid=args.wifi_ssid,
            wifi_password=args.wifi_password,
            broker=args.broker,
            mqtt_user=args.mqtt_user,
            mqtt_password=args.mqtt_password,
            prefix=args.prefix,
        )
    opts = Options(
        port=_port(args),
        config=cfg,
        node_src=Path(args.node_src),
        compile=not args.no_compile,
        wait=0 if args.no_wait else args.wait,
        watch_login=watch_login(args.watch_user, args.watch_password),
        dry_run=args.dry_run,
    )
    return deploy(opts)


def cmd_provision(args: argparse.Namespace) -> int:
    from espcam.provision.provisioning import ProvisionOptions, provision_node

    opts = ProvisionOptions(
        node_id=args.node,
        wifi_ssid=args.wifi_ssid,
        wifi_password=args.wifi_password,
        broker=args.broker,
        prefix=args.prefix,
        mqtt_user=args.mqtt_user,
        passwd_file=Path(args.passwd_file) if args.passwd_file else None,
        config_out=Path(args.config_out) if args.config_out else None,
        rotate=args.rotate,
        show_password=args.show_password,
    )
    return provision_node(opts)


def cmd_console(args: argparse.Namespace) -> int:
    from espcam.provision.console import console

    return console(_port(args))


def _add_node_values(p: argparse.ArgumentParser, with_node_id: bool) -> None:
    if with_node_id:
        p.add_argument("--node-id", help="the node's id: 1-32 of a-z 0-9 _ - (e.g. cam-kitchen)")
    p.add_argument("--wifi-ssid", help="the Wi-Fi network (2.4 GHz)")
    p.add_argument(
        "--wifi-password",
        help="the Wi-Fi password (or set ESPCAM_WIFI_PASSWORD, kept out of shell history)",
    )
    p.add_argument("--broker", help="the broker as the node reaches it: host or host:port")
    p.add_argument("--prefix", help="topic prefix (default espcam)")


def add_arguments(subparsers: Any) -> None:
    """Adds flash-firmware, deploy, provision and console to an argparse subparsers object."""
    from espcam.provision.deploy import NODE_SRC
    from espcam.provision.firmware import DEFAULT_BAUD, OFFSETS
    from espcam.provision.provisioning import DEFAULT_NODES_DIR, DEFAULT_PASSWD
    from espcam.provision.watchlogin import CLI_PASSWORD_VAR, CLI_USER

    p = subparsers.add_parser(
        "flash-firmware",
        help="write a MicroPython firmware to the board with esptool",
        description="Erases the board and writes a MicroPython firmware at the right offset "
        "for its chip (0x1000 for the ESP32 of an ESP32-CAM). The board must be in download "
        "mode: GPIO0 tied to GND while it resets (docs/hardware.md).",
    )
    p.add_argument("--port", help=f"serial port, e.g. /dev/ttyUSB0 or COM3 (or ${ENV_PORT})")
    p.add_argument("--firmware", required=True, help="the MicroPython .bin file")
    p.add_argument(
        "--chip",
        default="auto",
        choices=["auto", *OFFSETS],
        help="the chip (default: the one the firmware file is built for)",
    )
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help="flashing speed")
    p.add_argument(
        "--erase",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="erase the whole flash first (default: yes)",
    )
    p.set_defaults(func=_guarded(cmd_flash), command_name="flash-firmware")

    p = subparsers.add_parser(
        "deploy",
        help="copy the node app and its config.json to a board and wait for it to come online",
        description="Copies boot.py, main.py, lib/espcam/ (compiled to .mpy) and a generated "
        "config.json to the board with mpremote, only what changed (the app needs no other "
        "library; the rest of lib/ is left alone), resets the board and waits for its birth "
        "message on the broker, watching as a user that may read it: "
        f"{CLI_USER} with its password from ${CLI_PASSWORD_VAR} or ./.env (written by "
        "`espcam broker-users`), or --watch-user/--watch-password; none on a broker without "
        "passwords.",
    )
    p.add_argument("--port", help=f"serial port of the board (or ${ENV_PORT})")
    p.add_argument("--config", help="a config.json to start from (e.g. from espcam provision)")
    _add_node_values(p, with_node_id=True)
    p.add_argument("--mqtt-user", help="the node's broker user")
    p.add_argument(
        "--mqtt-password", help="the node's broker password (or set ESPCAM_MQTT_PASSWORD)"
    )
    p.add_argument(
        "--keep-config",
        action="store_true",
        help="leave the board's config.json as it is (update the app only)",
    )
    p.add_argument("--no-compile", action="store_true", help="copy .py files, not .mpy")
    p.add_argument("--node-src", default=str(NODE_SRC), help="the node app folder")
    p.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the birth message (default 60)",
    )
    p.add_argument("--no-wait", action="store_true", help="reset and return at once")
    p.add_argument(
        "--watch-user",
        help=f"broker user that watches for the birth (default {CLI_USER} when its password is "
        f"known, else none); never the node's own",
    )
    p.add_argument(
        "--watch-password",
        help=f"the watcher's password (for {CLI_USER}: ${CLI_PASSWORD_VAR} or ./.env)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, touch nothing")
    p.set_defaults(func=_guarded(cmd_deploy), command_name="deploy")

    p = subparsers.add_parser(
        "provision",
        help="create a node's broker user and its config.json in one step",
        description="Adds the node's user (named after the node) with a random password to "
        "the Mosquitto password file and writes the node's config.json for `espcam deploy "
        "--config`. The password is not printed unless asked.",
    )
    p.add_argument("node", help="the node id, e.g. cam-kitchen")
    _add_node_values(p, with_node_id=False)
    p.add_argument(
        "--mqtt-user",
        help="broker user name (default: the node id, which the shipped ACL expects)",
    )
    p.add_argument(
        "--passwd-file",
        help=f"Mosquitto password file (default {DEFAULT_PASSWD}, this checkout's)"
        if DEFAULT_PASSWD else "Mosquitto password file (required: espcam has no checkout here)",
    )
    p.add_argument(
        "--config-out",
        help=f"where to write the config (default {DEFAULT_NODES_DIR}/NODE.json)"
        if DEFAULT_NODES_DIR else "where to write the config (required: no checkout here)",
    )
    p.add_argument(
        "--rotate", action="store_true", help="replace an existing node's password and config"
    )
    p.add_argument("--show-password", action="store_true", help="also print the password")
    p.set_defaults(func=_guarded(cmd_provision), command_name="provision")

    p = subparsers.add_parser(
        "console", help="the board's console (app log and REPL) through mpremote"
    )
    p.add_argument("--port", help=f"serial port of the board (or ${ENV_PORT})")
    p.set_defaults(func=_guarded(cmd_console), command_name="console")
