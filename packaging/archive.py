"""Reproducible model.tar.gz: sorted entries, fixed metadata, gzip header without a timestamp.

Same staging directory in, same bytes out, so an archive's sha256 identifies its
content: a rebuild that changes nothing does not change the checksum (nor force a
new upload or endpoint update).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
from pathlib import Path

# Not MANIFEST.json: multi-model-server takes a top-level MANIFEST.json for a legacy model archive and fails to load it
MANIFEST_NAME = "taskrouter-manifest.json"
MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))  # the reproducible-builds convention
CHUNK = 8 * 2**20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under `root`, sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def file_manifest(root: Path, extra: dict | None = None) -> dict:
    """{"files": {path: {"sha256", "size"}}, **extra} for every file under `root` except the manifest."""
    files = {rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size}
             for rel in list_files(root) if rel != MANIFEST_NAME}
    return {**(extra or {}), "files": files}


def write_manifest(root: Path, manifest: dict) -> Path:
    path = root / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def _tarinfo(root: Path, rel: str) -> tarfile.TarInfo:
    path = root / rel
    info = tarfile.TarInfo(rel)
    info.size = path.stat().st_size
    info.mtime = MTIME
    info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(root: Path, out: Path, compresslevel: int = 1, progress=None) -> str:
    """Tar+gzip every file under `root` (no top-level folder) into `out`; returns the archive's sha256.

    `progress(nbytes)` is called as file contents are written (for a progress bar).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with open(partial, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for rel in list_files(root):
            info = _tarinfo(root, rel)
            with open(root / rel, "rb") as f:
                tar.addfile(info, _Counting(f, progress) if progress else f)
    partial.replace(out)
    return sha256_file(out)


class _Counting:
    """A file wrapper that reports how many bytes were read."""

    def __init__(self, f, progress):
        self.f, self.progress = f, progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.progress(len(data))
        return data


def verify_files(root: Path) -> list[str]:
    """Paths under an unpacked artifact whose checksum differs from its manifest, or are missing/extra."""
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    expected = manifest["files"]
    present = set(list_files(root)) - {MANIFEST_NAME}
    problems = [f"missing {rel}" for rel in sorted(set(expected) - present)]
    problems += [f"unlisted {rel}" for rel in sorted(present - set(expected))]
    problems += [f"checksum {rel}" for rel in sorted(present & set(expected))
                 if sha256_file(root / rel) != expected[rel]["sha256"]]
    return problems
