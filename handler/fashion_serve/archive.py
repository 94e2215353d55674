"""The model archive (scripts/archive.sh's .mar) read without TorchServe.

Both runtimes serve the same file: TorchServe unpacks it itself; the KServe runtime reads
model.pt, model-config.yaml and the manifest's name and version straight from the zip, so a
model is archived once and the runtimes cannot drift apart.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

MANIFEST = "MAR-INF/MANIFEST.json"


@dataclass(frozen=True)
class Archive:
    path: Path
    model_name: str
    model_version: str
    model_bytes: bytes  # the TorchScript file, contract inside
    config: dict  # model-config.yaml: workers, batchSize, ..., and the handler: section

    def model_file(self) -> io.BytesIO:
        return io.BytesIO(self.model_bytes)


def find_archive(path: Path) -> Path:
    """`path` itself if it is a file, else the one .mar in that folder (KServe's storage
    initializer downloads a storageUri into /mnt/models)."""
    if path.is_file():
        return path
    found = sorted(path.glob("*.mar")) if path.is_dir() else []
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise FileNotFoundError(
            f"{path}: {what} .mar archives; give one archive (scripts/archive.sh writes them)"
        )
    return found[0]


def read_archive(path: Path) -> Archive:
    path = find_archive(Path(path))
    with zipfile.ZipFile(path) as mar:
        manifest = json.loads(mar.read(MANIFEST))["model"]
        config_name = manifest.get("configFile")
        config = yaml.safe_load(mar.read(config_name)) if config_name else {}
        model_bytes = mar.read(manifest["serializedFile"])
    return Archive(
        path=path,
        model_name=manifest["modelName"],
        model_version=str(manifest.get("modelVersion") or ""),
        model_bytes=model_bytes,
        config=config or {},
    )
