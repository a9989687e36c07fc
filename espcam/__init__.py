"""espcam on the host: the backend (espcam.backend), the simulator (espcam.sim), the board
tools (espcam.provision) and the node app they deploy (espcam.node, MicroPython files shipped
as data). The `espcam` command is espcam.cli."""

__version__ = "0.2.0"
