"""Putting espcam on real boards: flash MicroPython, deploy the node app, provision nodes.

`add_arguments(subparsers)` adds the subcommands flash-firmware, deploy, provision and
console to the espcam command line.
"""

from espcam.provision.cli import add_arguments
from espcam.provision.errors import ProvisionError

__all__ = ["ProvisionError", "add_arguments"]
