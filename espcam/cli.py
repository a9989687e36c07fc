"""The `espcam` command. Each subcommand belongs to one part of espcam and is handed to it: the
backend (serve, node commands, listings, broker users), the simulator (sim) and the board tools
(flash-firmware, deploy, provision, console). The simulator and the board tools parse their own
arguments and are imported only when asked for, so the backend alone (the Docker image) needs
none of their packages.

Exit codes (docs/backend.md): 0 done, 1 error (broker unreachable, storage), 2 bad usage or
configuration, 3 refused by the node, 4 queued (node asleep or offline), 5 no answer in time.
"""

from __future__ import annotations

import argparse
import sys

from espcam import __version__
from espcam.backend import cli as backend_cli

SIM_COMMAND = "sim"
BOARD_COMMANDS = {
    "flash-firmware": "write MicroPython to a board with esptool",
    "deploy": "copy the node app and config.json onto a board",
    "provision": "create a node's broker user and config.json",
    "console": "the board's console (mpremote repl)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="espcam", description="espcam: ESP32-CAM nodes, their backend and board tools",
        epilog="exit codes: 0 done, 1 error, 2 usage, 3 refused by node, 4 queued, 5 no answer",
    )
    parser.add_argument("--version", action="version", version=f"espcam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    backend_cli.add_commands(sub)
    from espcam.backend import otacli

    otacli.add_arguments(sub, backend_cli._common)
    # Listed for --help; main() hands their arguments to their own parsers.
    sub.add_parser(SIM_COMMAND, help="run simulated nodes (espcam sim --help)")
    for name, text in BOARD_COMMANDS.items():
        sub.add_parser(name, help=f"{text} (espcam {name} --help)")
    return parser


def run_sim(argv: list[str]) -> int:
    try:
        from espcam.sim import runner
    except ImportError as e:
        print(f"espcam sim: the simulator is not available: {e}", file=sys.stderr)
        return backend_cli.EXIT_ERROR
    parser = argparse.ArgumentParser(prog="espcam sim")
    runner.add_arguments(parser)
    return int(runner.run(parser.parse_args(argv)) or 0)


def run_board(argv: list[str]) -> int:
    """Board tools talk to a serial port, not to the backend's settings."""
    from espcam import provision

    parser = argparse.ArgumentParser(prog="espcam")
    provision.add_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [SIM_COMMAND]:
        return run_sim(argv[1:])
    if argv[:1] and argv[0] in BOARD_COMMANDS:
        return run_board(argv)
    return backend_cli.run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
