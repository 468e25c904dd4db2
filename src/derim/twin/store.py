"""Fitted forecasters on disk, versioned, each with the metadata of its training.

Layout: ``<root>/<device>/<field>/<model>/v<N>.pkl`` beside ``v<N>.json``; ``selection.json`` in
``<root>/<device>/<field>/`` names the model the backtest chose. The files are DERIM's own (pickle
is only ever read from the data directory it writes to).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from derim.errors import NotFoundError, TwinError

if TYPE_CHECKING:
    from derim.twin.base import Forecaster  # pandas and NumPy: loaded with the first model


class ModelInfo(BaseModel):
    """What a stored model was trained on and how it scored."""

    device_id: str
    field: str
    model: str
    version: int = 0
    trained_at: datetime
    freq: str
    horizon: str
    history_start: datetime
    history_end: datetime
    points: int
    train_seconds: float
    latitude: float | None = None
    longitude: float | None = None
    backtest: dict[str, object] | None = None
    """The model's all-leads backtest metrics when it was trained."""


class ModelStore:
    """Versioned model files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, forecaster: Forecaster, info: ModelInfo) -> ModelInfo:
        """Store ``forecaster`` as the next version of its model; returns the stored info."""
        folder = self.root / info.device_id / info.field / info.model
        folder.mkdir(parents=True, exist_ok=True)
        version = max(self._versions(folder), default=0) + 1
        stored = info.model_copy(update={"version": version})
        _write_atomic(folder / f"v{version}.pkl", pickle.dumps(forecaster, protocol=5))
        _write_atomic(folder / f"v{version}.json", stored.model_dump_json(indent=2).encode())
        return stored

    def load(self, device_id: str, field: str, model: str) -> tuple[Forecaster, ModelInfo]:
        """The latest version of ``model`` for the device's ``field``."""
        from derim.twin.base import Forecaster

        folder = self.root / device_id / field / model
        versions = self._versions(folder)
        if not versions:
            raise NotFoundError("trained model", f"{device_id}/{field}/{model}")
        version = max(versions)
        info = ModelInfo.model_validate_json((folder / f"v{version}.json").read_bytes())
        try:
            forecaster = pickle.loads((folder / f"v{version}.pkl").read_bytes())
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise TwinError(f"model file {folder}/v{version}.pkl cannot be read: {exc}") from exc
        if not isinstance(forecaster, Forecaster):
            raise TwinError(f"model file {folder}/v{version}.pkl holds no forecaster")
        return forecaster, info

    def latest_version(self, device_id: str, field: str, model: str) -> int | None:
        """The newest stored version of ``model``, if any."""
        return max(self._versions(self.root / device_id / field / model), default=None)

    def infos(self, device_id: str, field: str) -> list[ModelInfo]:
        """The latest version's info of every model stored for the device's ``field``."""
        base = self.root / device_id / field
        found = []
        for folder in sorted(p for p in base.glob("*") if p.is_dir()):
            versions = self._versions(folder)
            if versions:
                path = folder / f"v{max(versions)}.json"
                found.append(ModelInfo.model_validate_json(path.read_bytes()))
        return found

    def select(self, device_id: str, field: str, model: str) -> None:
        """Record ``model`` as the one to serve by default for the device's ``field``."""
        path = self.root / device_id / field / "selection.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps({"model": model}).encode())

    def selected(self, device_id: str, field: str) -> str | None:
        """The model chosen by the last training's backtest, if any."""
        path = self.root / device_id / field / "selection.json"
        if not path.exists():
            return None
        model = json.loads(path.read_bytes()).get("model")
        return model if isinstance(model, str) else None

    @staticmethod
    def _versions(folder: Path) -> list[int]:
        return [int(p.stem[1:]) for p in folder.glob("v*.json") if p.stem[1:].isdigit()]


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "wb") as file:
        file.write(data)
    os.replace(temporary, path)
