"""Checkpoint integrity: a checksum manifest written beside a finished checkpoint step and
verified before the step is trusted.

The manifest ``STEP/jaxknow_manifest.json`` lists every file of the step (relative path, size,
sha256). It is written (atomically) only after orbax has finalised the step, so its presence
also says the step was complete. A step whose files differ from its manifest, or that has no
manifest, is not intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

MANIFEST = "jaxknow_manifest.json"
_CHUNK = 1 << 22


def _files(step_dir: Any) -> list[Any]:
    """Returns every file under `step_dir` except the manifest, sorted by relative path."""
    out = []
    stack = [step_dir]
    while stack:
        d = stack.pop()
        for p in d.iterdir():
            if p.is_dir():
                stack.append(p)
            elif p.name != MANIFEST and not p.name.endswith(".tmp"):
                out.append(p)
    return sorted(out, key=lambda p: str(p))


def _sha256(path: Any) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def _rel(path: Any, root: Any) -> str:
    return os.path.relpath(str(path), str(root))


def compute_manifest(step_dir: Any) -> dict[str, Any]:
    """Returns {"files": {relative path: {"size", "sha256"}}} of a checkpoint step directory."""
    files = {}
    for p in _files(step_dir):
        size, digest = _sha256(p)
        files[_rel(p, step_dir)] = {"size": size, "sha256": digest}
    return {"version": 1, "files": files}


def write_manifest(step_dir: Any, step: int) -> None:
    """Hashes every file of `step_dir` and writes the manifest atomically (temp file, rename)."""
    manifest = dict(compute_manifest(step_dir), step=int(step))
    tmp = step_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(step_dir / MANIFEST)


def has_manifest(step_dir: Any) -> bool:
    """Returns True when the step directory carries a manifest."""
    return (step_dir / MANIFEST).exists()


def verify(step_dir: Any) -> str | None:
    """Returns None if every file of `step_dir` matches its manifest, else why not (naming the
    first differing file)."""
    mpath = step_dir / MANIFEST
    if not step_dir.is_dir():
        return "the step directory is missing"
    if not mpath.exists():
        return (
            f"no checksum manifest ({MANIFEST}): the save did not finish, or it was "
            "written by an older version"
        )
    try:
        want = json.loads(mpath.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its manifest {mpath} is unreadable ({e})"
    have = {_rel(p, step_dir): p for p in _files(step_dir)}
    missing = sorted(set(want) - set(have))
    if missing:
        return f"file {step_dir / missing[0]} is missing"
    extra = sorted(set(have) - set(want))
    if extra:
        return f"file {step_dir / extra[0]} is not in the manifest"
    for rel, rec in want.items():
        try:
            size, digest = _sha256(have[rel])
        except OSError as e:
            return f"file {step_dir / rel} is unreadable ({e})"
        if size != rec["size"]:
            return f"file {step_dir / rel} has {size} bytes, the manifest says {rec['size']}"
        if digest != rec["sha256"]:
            return f"file {step_dir / rel} fails its sha256 checksum"
    return None
