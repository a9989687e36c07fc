"""Fetch umqtt.simple for simulated nodes into .deps/node-lib (never committed).

pip cannot install the micropython-umqtt.simple sdist (it has no setup.py), so we ask the
package index's JSON simple API (PEP 691) for the release file, check its sha256 and unpack
only umqtt/simple.py. The index is the one pip is configured with.

Only 1.3.4: micropython-lib's newer releases (1.4 and later) are published to its own mip index,
not to PyPI, where micropython-umqtt.simple stops at 1.3.4 (versions 1.1, 1.2.1, 1.3, 1.3.3,
1.3.4); docs/node.md says what that leaves untested.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

PACKAGE = "micropython-umqtt-simple"
VERSION = "1.3.4"
ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / ".deps" / "node-lib"


def index_url() -> str:
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
        )
        url = out.stdout.strip() if out.returncode == 0 else ""
    if not url:
        from pip._internal.models.index import PyPI  # pip's own default index

        url = PyPI.simple_url
    return url.rstrip("/")


def main() -> int:
    target = DEST / "umqtt" / "simple.py"
    if target.exists():
        return 0
    api = f"{index_url()}/{PACKAGE}/"
    req = urllib.request.Request(api, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        listing = json.load(resp)
    wanted = f"micropython-umqtt.simple-{VERSION}.tar.gz"
    files = [f for f in listing["files"] if f["filename"] == wanted]
    if not files:
        print(f"fetch_umqtt: {wanted} not found at {api}", file=sys.stderr)
        return 1
    entry = files[0]
    with urllib.request.urlopen(entry["url"], timeout=60) as resp:
        blob = resp.read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != entry["hashes"]["sha256"]:
        print(f"fetch_umqtt: sha256 mismatch for {wanted}", file=sys.stderr)
        return 1
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/umqtt/simple.py"))
        data = tar.extractfile(member).read()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.rename(target)
    print(f"fetch_umqtt: umqtt.simple {VERSION} -> {target.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
