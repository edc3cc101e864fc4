"""Model artifacts on disk: unpack a model.tar.gz as SageMaker does, and read which base it holds.

Kept free of torch so `taskrouter serve` can unpack before it starts gunicorn.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
import tempfile
from pathlib import Path

log = logging.getLogger("taskrouter")
ARTIFACT_INFO = "taskrouter.json"  # {"base_model", "quantization"} at an artifact's top level


def base_name_of(model_dir: Path) -> str:
    """The name adapters' router.json use for a model folder's base: its taskrouter.json, else the folder name."""
    info = model_dir / ARTIFACT_INFO
    return json.loads(info.read_text())["base_model"] if info.exists() else model_dir.name


def unpack_artifact(path: str | Path) -> Path:
    """A model.tar.gz unpacked (as SageMaker does into /opt/ml/model) once per archive content; a folder as is."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path}: no model there (an unpacked artifact has config.json at its top)")
        return path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if not tarfile.is_tarfile(path):
        raise ValueError(f"{path}: neither a folder nor a model.tar.gz")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    target = Path(tempfile.gettempdir()) / f"taskrouter-model-{digest.hexdigest()[:16]}"
    if not target.is_dir():
        partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
        log.warning("taskrouter: unpacking %s into %s", path, target)
        with tarfile.open(path) as tar:
            tar.extractall(partial, filter="data")
        try:
            partial.rename(target)
        except OSError:  # another process unpacked the same archive first
            shutil.rmtree(partial)
    return target
