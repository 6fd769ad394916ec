"""Fake engines for the model pool: model folders on disk, and engines that load slowly or fail."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from app.engine.engine import EngineConfig
from app.engine.models.loader import LoadConfig
from app.engine.scheduling.scheduler import SchedulerConfig
from app.engine.types import ModelInfo
from tests.api.fake_engine import FakeEngine

MIB = 1 << 20


def model_folder(root: Path, name: str, weight_bytes: int = 1000) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"\0" * weight_bytes)
    return folder


def default_config(tmp_path: Path, kv_bytes: int = MIB) -> EngineConfig:
    folder = tmp_path / "default"
    if not folder.exists():
        model_folder(tmp_path, "default")
    return EngineConfig(LoadConfig(str(folder)), "default", scheduler=SchedulerConfig(kv_budget_bytes=kv_bytes))


class SlowFake(FakeEngine):
    """A fake engine whose start takes `load_s` (a model's load) or fails."""

    load_s: float = 0.0
    fails: bool = False

    async def start(self) -> None:
        await asyncio.sleep(self.load_s)
        if self.fails:
            raise OSError("weights unreadable")
        await super().start()


class Factory:
    """Builds a fake engine per load and remembers each (the pool's `new_engine`)."""

    def __init__(self, load_s: float = 0.0, failing: frozenset[str] = frozenset()) -> None:
        self.built: list[tuple[str, SlowFake]] = []
        self.load_s, self.failing = load_s, failing

    def __call__(self, config: EngineConfig) -> SlowFake:
        name = config.served_model_name
        engine = SlowFake(info_on_start=ModelInfo(name, 2048, 100, (2,), 1))
        engine.load_s, engine.fails = self.load_s, name in self.failing
        self.built.append((name, engine))
        return engine

    def loads_of(self, name: str) -> int:
        return sum(built == name for built, _ in self.built)


def models_folder(root: Path) -> Path:
    """alpha, beta, gamma (folders), delta (a .gguf file), and three things that are not models."""
    for name in ("alpha", "beta", "gamma"):
        model_folder(root, name)
    (root / "delta.gguf").write_bytes(b"\0" * 500)
    (root / "notes.txt").write_text("not a model")
    (root / "empty").mkdir()  # no config.json: not a model
    model_folder(root, ".hidden")
    return root
