# Host stand-in for the `network` module of MicroPython's ESP32 port: one station interface.
# The simulated access point is sim.json "wifi" {"ssid", "password"}; connecting takes
# sim.json "wifi_connect_ms" (default 300). While the file ctl/wifi_down exists the AP is gone:
# connect() does not succeed (status STAT_NO_AP_FOUND) and isconnected() is False; the runner's
# link proxy stops carrying the node's open connections (see docs/simulator.md). The interface
# reports the loopback address, since the broker is reached over loopback.
import time

import _simboard as _sb

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204
AUTH_OPEN = 0
AUTH_WEP = 1
AUTH_WPA_PSK = 2
AUTH_WPA2_PSK = 3
AUTH_WPA_WPA2_PSK = 4
MODE_11B = 1
MODE_11G = 2
MODE_11N = 4

_hostname = "espressif"
_ifaces = {}


def hostname(name=None):
    global _hostname
    if name is None:
        return _hostname
    _hostname = name


class WLAN:
    def __new__(cls, interface_id=STA_IF):
        w = _ifaces.get(interface_id)
        if w is None:
            w = object.__new__(cls)
            w._if = interface_id
            w._active = False
            w._want = None      # (ssid, key) asked for by connect(), None after disconnect()
            w._t0 = None        # when the current association attempt started
            w._static = None
            w._reconnects = -1
            _ifaces[interface_id] = w
        return w

    def __init__(self, interface_id=STA_IF):
        pass

    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)
        if not self._active:
            self._want = None
        return None

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not self._active:
            raise OSError("Wifi Not Started")
        if self._want is not None and self.status() != STAT_GOT_IP:
            # The ESP32 driver refuses a new connect() while an earlier attempt is still alive
            # (failing or in progress) until disconnect() ends it.
            raise OSError("Wifi Internal State Error")
        self._want = (ssid, key or "")
        self._t0 = time.ticks_ms()

    def disconnect(self):
        self._want = None

    def status(self, param=None):
        if param is not None:
            if param == "rssi":
                if not self.isconnected():
                    raise OSError("STA not connected")
                return _sb.cfg().get("rssi", -61)
            raise ValueError("unknown status param")
        if not self._active or self._want is None:
            return STAT_IDLE
        ap = _sb.cfg().get("wifi") or {}
        if _sb.ctl("wifi_down") or self._want[0] != ap.get("ssid", self._want[0]):
            self._t0 = None     # association restarts when the AP comes back
            return STAT_NO_AP_FOUND
        if self._want[1] != ap.get("password", self._want[1]):
            return STAT_WRONG_PASSWORD
        if self._t0 is None:
            self._t0 = time.ticks_ms()
        if time.ticks_diff(time.ticks_ms(), self._t0) < _sb.cfg().get("wifi_connect_ms", 300):
            return STAT_CONNECTING
        return STAT_GOT_IP

    def isconnected(self):
        return self.status() == STAT_GOT_IP

    def ifconfig(self, cfg=None):
        if cfg is not None:
            if len(cfg) != 4:
                raise ValueError("need 4 values")
            self._static = tuple(cfg)
            return None
        if self._static:
            return self._static
        if not self.isconnected():
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
        return (_sb.cfg().get("ip", "127.0.0.1"), "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def ipconfig(self, *args, **kw):
        if args and args[0] == "addr4":
            return (self.ifconfig()[0], self.ifconfig()[1])
        if args and args[0] == "gw4":
            return self.ifconfig()[2]
        if args and args[0] == "dhcp4":
            return self._static is None
        return None

    def config(self, *args, **kw):
        if args:
            p = args[0]
            if p == "mac":
                return _sb.mac()
            if p in ("ssid", "essid"):
                return self._want[0] if self._want else ""
            if p in ("hostname", "dhcp_hostname"):
                return _hostname
            if p == "reconnects":
                return self._reconnects
            if p == "txpower":
                return 20
            if p == "channel":
                return 6
            raise ValueError("unknown config param")
        if "reconnects" in kw:
            self._reconnects = kw["reconnects"]
        for k in ("hostname", "dhcp_hostname"):
            if k in kw:
                hostname(kw[k])
        return None

    def scan(self):
        if _sb.ctl("wifi_down"):
            return []
        ap = _sb.cfg().get("wifi") or {}
        return [(ap.get("ssid", "espcam-sim").encode(), b"\x24\x0a\xc4\x00\x00\xff", 6,
                 _sb.cfg().get("rssi", -61), AUTH_WPA2_PSK, False)]
