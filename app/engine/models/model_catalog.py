"""The models a server can serve, by name: its default model, and every model in a models folder.

In the folder, a subfolder holding a `config.json` is a model named after the subfolder, and a `.gguf`
file one named after the file without `.gguf`. The folder is read again whenever a name is not known
or the list is asked for, so a model copied in while the server runs is served without a restart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from app.engine.engine import EngineConfig

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    config: EngineConfig
    file_bytes: int  # the weight files' size on disk: what a load is estimated to take before it runs
    created: int  # when the model's files were last changed (Unix seconds), for listings of unloaded models


class ModelCatalog:
    def __init__(self, default: EngineConfig, models_dir: str | None = None) -> None:
        self.default_name = default.served_model_name
        self._default = default
        self._folder = Path(models_dir) if models_dir else None
        self._entries: dict[str, CatalogEntry] = {}
        self.refresh()

    def refresh(self) -> None:
        """Read the folder again; the default model keeps its name even when the folder has one like it."""
        entries = {name: self._entry(name, path) for name, path in self._scan()}
        entries[self.default_name] = self._entry(self.default_name, Path(self._default.load.model), self._default)
        self._entries = entries

    def names(self) -> list[str]:
        """Every model's name, the default first, then the folder's in name order."""
        self.refresh()
        return [self.default_name, *sorted(name for name in self._entries if name != self.default_name)]

    def lookup(self, name: str) -> CatalogEntry | None:
        if name not in self._entries and self._folder is not None:
            self.refresh()
        return self._entries.get(name)

    def _scan(self) -> list[tuple[str, Path]]:
        if self._folder is None or not self._folder.is_dir():
            return []
        found, default = [], Path(self._default.load.model).resolve()
        for path in self._folder.iterdir():
            if path.name.startswith(".") or path.resolve() == default:  # the default model, by its own name
                continue
            if path.is_dir() and (path / "config.json").is_file():
                found.append((path.name, path))
            elif path.is_file() and path.suffix == ".gguf":
                found.append((path.stem, path))
        return found

    def _entry(self, name: str, path: Path, config: EngineConfig | None = None) -> CatalogEntry:
        if config is None:
            config = replace(self._default, load=replace(self._default.load, model=str(path)), served_model_name=name)
        created = int(path.stat().st_mtime) if path.exists() else int(time.time())
        return CatalogEntry(name, config, weight_bytes(path), created)


def weight_bytes(path: Path) -> int:
    """The size of a model's weight files (0 for a hub id, which is not on disk yet)."""
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
