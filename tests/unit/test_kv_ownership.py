"""One object owns the KV rows: the core and the runner ask KVStore, LayerCache and kv_store's cache
functions, and never reach into a cache's layers themselves (checked on the source with `ast`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "app" / "engine"

# What only kv_store.py and slab_cache.py may touch: a cache's layers and a layer's buffers and counts.
LAYER_INTERNALS = {"layers", "keys", "values", "buffers", "room_for", "fill_to", "set_filled", "holding",
                   "get_seq_length", "allocated_bytes"}
SLAB_HELPERS = {"SlabLayer", "slab_class_of", "spare_buffer", "hf_slab_layer", "layer_bytes"}
# A prefix-cache entry's own list of (keys, values): the cache's data, not a KV cache's layers.
ALLOWED = {("core.py", "entry.layers")}


def reaches(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = {node.func for node in ast.walk(tree) if isinstance(node, ast.Call)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in LAYER_INTERNALS:
            if node.attr == "values" and node in calls:
                continue  # a dict's .values()
            text = ast.unparse(node)
            if (path.name, text) not in ALLOWED:
                found.append(f"{path.name}:{node.lineno} {text}")
        elif isinstance(node, ast.ImportFrom):
            found += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if a.name in SLAB_HELPERS]
    return found


@pytest.mark.parametrize("module", ["core.py", "runner.py"])
def test_the_core_and_the_runner_leave_the_kv_layers_to_their_owner(module):
    assert reaches(ENGINE / module) == []


def test_the_scan_sees_a_reach(tmp_path):
    module = tmp_path / "core.py"
    module.write_text("from app.engine.kv.slab_cache import spare_buffer\n"
                      "for layer in store.cache.layers:\n    layer.set_filled(3)\nd.values()\nentry.layers\n")
    assert reaches(module) == ["core.py:1 imports spare_buffer", "core.py:2 store.cache.layers",
                               "core.py:3 layer.set_filled"]
