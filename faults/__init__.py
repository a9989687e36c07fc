"""The fault campaign (issue 10, item 5): real Mosquitto, `espcam serve` as a process, simulated
MicroPython nodes (and CPython light nodes where a fault needs many), each fault done to them
for real (SIGKILL, SIGSTOP, iptables in a network namespace of the campaign's own, the
simulator's power cut and Wi-Fi loss), then every node's frames counted: captured, stored,
counted lost. The invariant: captured = stored + counted lost, for every node, after every
fault; with the spool on, stored = captured unless the fault is one the spool cannot cover.

    .venv/bin/python -m faults            the full campaign (docs/reliability.md has its table)
    .venv/bin/python -m faults --quick    the short form (tests/test_faults.py runs it)

A dev tool beside bench/, not part of the installed espcam package.
"""
