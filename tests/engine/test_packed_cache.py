"""The packed-weights cache (app/engine/native/packed_cache.py): a second start maps what the first
packed, computes exactly the same, and never uses a pack made from other files or settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.engine.models.loader import LoadConfig, load
from app.engine.native import packed_cache
from tests.engine.helpers import make_core

PROMPT_IDS = [5, 17, 42, 99, 3, 64, 200, 7]


@pytest.fixture
def folder(tmp_path: Path, tiny_model_dir: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy, ignore=shutil.ignore_patterns(packed_cache.FOLDER))
    return copy


def _load(folder: Path, dtype: str = "float32", quantization: str = "int4"):
    loaded = load(LoadConfig(str(folder), device="cpu", dtype=dtype, quantization=quantization))
    if loaded.native is None:
        pytest.skip(f"the native kernels are not in use here: {loaded.runtime.forward}")
    return loaded


def _logits(loaded) -> torch.Tensor:
    runner = make_core(loaded).runner
    return runner.prefill(runner.new_cache(), PROMPT_IDS, 0)


def _packs(folder: Path) -> list[Path]:
    return sorted((folder / packed_cache.FOLDER).glob("*.safetensors"))


def _mapped(loaded) -> bool:
    return getattr(loaded.native, "keep_alive", None) is not None


def test_the_second_start_maps_the_first_ones_pack_and_answers_the_same(folder):
    first = _load(folder)
    assert not _mapped(first) and len(_packs(folder)) == 1
    second = _load(folder)
    assert _mapped(second)
    assert second.native.weight_formats == first.native.weight_formats
    assert second.runtime.quantization == first.runtime.quantization
    assert torch.equal(_logits(first), _logits(second))


def test_each_dtype_and_quantization_keeps_its_own_pack(folder):
    kinds = (("float32", "int4"), ("float32", "int8"), ("bfloat16", "int4"))
    fresh = [_logits(_load(folder, dtype, quantization)) for dtype, quantization in kinds]
    assert len(_packs(folder)) == 3
    again = [_load(folder, dtype, quantization) for dtype, quantization in kinds]
    assert all(map(_mapped, again))
    assert all(torch.equal(a, _logits(b)) for a, b in zip(fresh, again, strict=True))


def test_changed_weights_are_packed_again_and_replace_the_stale_pack(folder):
    first = _load(folder)
    stale = _packs(folder)
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(n for n in tensors if n.endswith("mlp.down_proj.weight"))
    tensors[name] = tensors[name] * 2
    save_file(tensors, str(weights), metadata={"format": "pt"})
    changed = _load(folder)
    assert not _mapped(changed)
    assert not torch.equal(_logits(first), _logits(changed))
    assert len(_packs(folder)) == 1 and _packs(folder) != stale
    assert torch.equal(_logits(changed), _logits(_load(folder)))


def test_a_damaged_pack_is_ignored(folder):
    expected = _logits(_load(folder))
    (pack,) = _packs(folder)
    pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])
    again = _load(folder)
    assert not _mapped(again)
    assert torch.equal(_logits(again), expected)


def test_a_folder_that_cannot_hold_a_pack_still_loads(folder):
    (folder / packed_cache.FOLDER).write_text("a file where the folder would go")
    loaded = _load(folder)
    assert not _mapped(loaded) and loaded.native is not None


def test_dense_weights_are_not_saved(folder):
    _load(folder, quantization="none")
    assert _packs(folder) == []


def test_a_changed_config_makes_a_new_pack(folder):
    _load(folder)
    stale = _packs(folder)
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"max_position_embeddings": ', '"max_position_embeddings": 1'))
    assert not _mapped(_load(folder)) and _packs(folder) != stale


def test_a_write_that_fails_midway_leaves_no_file_and_the_model_loads(folder, monkeypatch):
    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a pack")
        raise RuntimeError("disk full")  # safetensors' own error types are not OSErrors
    monkeypatch.setattr(packed_cache, "save_file", failing_save)
    loaded = _load(folder)
    assert loaded.native is not None and not _mapped(loaded)
    assert list((folder / packed_cache.FOLDER).iterdir()) == []
