"""Update packages on disk and what travels for them (docs/protocol.md, "Updates"): the
manifest, the offer signed for one node, and the pieces of a file. No MQTT here: backend/ota.py
serves packages and `espcam ota` (backend/otacli.py) makes them.

    <data_dir>/ota/packages/<id>/manifest.json   the manifest, byte for byte as hashed
    <data_dir>/ota/packages/<id>/files/<path>    each file of the app
    <data_dir>/ota/nodes/<node>.json             the node's record (NodeRecord)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from espcam.backend.names import is_node_id
from espcam.backend.protocol import SPEC

_OTA = SPEC["ota"]
PIECE_HEADER = _OTA["piece"]["header"]  # magic, version, reserved, tag, file, offset
PIECE_MAGIC = _OTA["piece"]["magic"].encode()
PIECE_VERSION = _OTA["piece"]["version"]
PIECE_HEADER_LEN = struct.calcsize(PIECE_HEADER)
PIECE_DATA = _OTA["piece"]["max_data"]  # the node reads at most 1024 bytes a message
MAX_WINDOW = _OTA["get"]["max_len"]
DEADLINE = _OTA["offer"]["deadline_default"]
TERMINAL = ("done", "failed", "rolled_back", "refused")
HISTORY = 20  # outcomes kept per node


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tag_of(manifest_sha: str) -> int:
    """The 32-bit tag that marks every piece of one update: the manifest hash's first bytes."""
    return int(manifest_sha[:8], 16)


def encode_piece(tag: int, index: int, offset: int, data: bytes) -> bytes:
    return struct.pack(PIECE_HEADER, PIECE_MAGIC, PIECE_VERSION, 0, tag, index, offset) + data


def manifest_bytes(version: str, summary: str, files: dict[str, bytes]) -> bytes:
    doc = {"version": version, "summary": summary,
           "files": [[p, len(b), sha256_hex(b)] for p, b in sorted(files.items())]}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def sign_offer(key_hex: str, offer: dict[str, Any]) -> str:
    """The offer payload: the offer as text and its HMAC-SHA256 under the node's key. The text
    is signed as sent, so the node need not rebuild any canonical form to check it."""
    text = json.dumps(offer, separators=(",", ":"), sort_keys=True)
    sig = hmac.new(bytes.fromhex(key_hex), text.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"offer": text, "sig": sig})


class Package:
    """One stored update: file 0 is the manifest, files 1.. are the manifest's in its order."""

    def __init__(self, root: Path, pid: str) -> None:
        if not pid or "/" in pid or pid.startswith("."):
            raise ValueError(f"bad package id {pid!r}")
        self.id, self.dir = pid, root / "packages" / pid
        self.manifest = (self.dir / "manifest.json").read_bytes()
        doc = json.loads(self.manifest)
        self.version: str = doc["version"]
        self.summary: str = doc.get("summary", "")
        self.paths: list[str] = ["manifest.json"] + [f[0] for f in doc["files"]]
        self.sizes: list[int] = [len(self.manifest)] + [f[1] for f in doc["files"]]
        self.sha = sha256_hex(self.manifest)
        self.tag = tag_of(self.sha)

    @property
    def size(self) -> int:
        return sum(self.sizes[1:])

    def read(self, index: int, offset: int, n: int) -> bytes:
        if not 0 <= index < len(self.paths) or not 0 <= offset <= self.sizes[index]:
            raise ValueError(f"no bytes at file {index} offset {offset}")
        if index == 0:
            return self.manifest[offset:offset + n]
        with open(self.dir / "files" / self.paths[index], "rb") as f:
            f.seek(offset)
            return f.read(n)

    def offer(self, node: str, key_hex: str, deadline: int = DEADLINE) -> str:
        return sign_offer(key_hex, {"id": self.id, "node": node, "version": self.version,
                                    "size": len(self.manifest), "sha256": self.sha,
                                    "deadline": deadline})


def store_package(root: Path, version: str, summary: str, files: dict[str, bytes]) -> Package:
    """Writes a package and returns it. The id names the version and the moment, so that the
    same app offered again after a failure is a new update the node does not skip."""
    man = manifest_bytes(version, summary, files)
    pid = f"{version}-{int(time.time() * 1000):x}-{sha256_hex(man)[:6]}"
    d = root / "packages" / pid
    for path, data in files.items():
        p = d / "files" / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (d / "manifest.json").write_bytes(man)
    return Package(root, pid)


@dataclass
class NodeRecord:
    """What the backend knows of one node's updates: the offer staged for it (signed, as
    published), the node's last status, and the outcomes so far."""

    node: str
    package: str | None = None
    version: str | None = None
    summary: str = ""
    offer: str | None = None
    offered: bool = False  # published on the offer topic (else staged for Install)
    state: str | None = None
    progress: int | None = None
    installed: str | None = None
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def path(root: Path, node: str) -> Path:
        if not is_node_id(node):
            raise ValueError(f"bad node id {node!r}")
        return root / "nodes" / f"{node}.json"

    @classmethod
    def load(cls, root: Path, node: str) -> NodeRecord:
        try:
            d = json.loads(cls.path(root, node).read_text())
        except (OSError, ValueError):
            return cls(node)
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, root: Path) -> None:
        p = self.path(root, self.node)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        os.replace(tmp, p)

    def outcome(self, uid: str | None, state: str, error: str | None, when: float) -> bool:
        """Records a terminal outcome once (a retained status comes back at every
        reconnect); True if it was new."""
        last = self.history[-1] if self.history else None
        if last and last.get("id") == uid and last.get("state") == state:
            return False
        self.history = [*self.history, {"id": uid, "state": state, "version": self.version,
                                        "error": error, "at": round(when, 3)}][-HISTORY:]
        return True

    def ha_state(self) -> dict[str, Any]:
        """The Home Assistant update entity's state document (HA's MQTT update platform)."""
        busy = self.state in ("offered", "downloading", "verifying", "restarting")
        latest = self.version if self.version and self.state != "done" else self.installed
        summary = self.summary
        if self.state in ("failed", "rolled_back", "refused") and self.error:
            summary = f"{self.state.replace('_', ' ')}: {self.error}"
        return {"installed_version": self.installed, "latest_version": latest or self.installed,
                "title": "espcam node app", "release_summary": summary[:255],
                "in_progress": busy,
                "update_percentage": self.progress if busy and self.progress is not None
                else None}
