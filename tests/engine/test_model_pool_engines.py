"""The model pool over real engines: tiny random Llamas in a models folder stream side by side, each
answering exactly as it does alone, and an unloaded model's memory goes back to the system."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.engine.engine import EngineConfig
from app.engine.models.model_catalog import ModelCatalog
from app.engine.model_pool import ModelPool, PoolConfig
from app.engine.types import SamplingParams
from tests.conftest import build_tiny_model
from tests.engine.helpers import tiny_load_config

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for seed, name in ((1, "tiny-a"), (2, "tiny-b")):
        build_tiny_model(root / name, seed=seed)
    return root


def pool_of(default_dir: Path, models_dir: Path, **config) -> ModelPool:
    default = EngineConfig(tiny_load_config(default_dir), "tiny")
    return ModelPool(ModelCatalog(default, str(models_dir)), PoolConfig(**config))


async def tokens(pool: ModelPool, name: str, prompt: list[int]) -> list[int]:
    lease = await pool.acquire(name)
    try:
        return [token async for event in lease.engine.generate(prompt, GREEDY) for token in event.token_ids]
    finally:
        lease.release()


async def test_models_stream_side_by_side_and_each_answers_as_it_does_alone(tiny_model_dir, models_dir):
    pool = pool_of(tiny_model_dir, models_dir)
    await pool.start()
    try:
        prompt = [5, 17, 42, 99]
        alone = {name: await tokens(pool, name, prompt) for name in ("tiny", "tiny-a", "tiny-b")}
        together = await asyncio.gather(*(tokens(pool, name, prompt) for name in ("tiny", "tiny-a", "tiny-b")))
        assert dict(zip(("tiny", "tiny-a", "tiny-b"), together)) == alone
        assert len({tuple(answer) for answer in alone.values()}) == 3, "three different models answered"
        assert set(pool.engines()) == {"tiny", "tiny-a", "tiny-b"}
    finally:
        await pool.stop()


async def test_a_model_loaded_again_answers_as_before(tiny_model_dir, models_dir):
    pool = pool_of(tiny_model_dir, models_dir)
    await pool.start()
    try:
        first = await tokens(pool, "tiny-a", [1, 2, 3])
        await pool.unload("tiny-a")
        assert "tiny-a" not in pool.engines()
        assert await tokens(pool, "tiny-a", [1, 2, 3]) == first
    finally:
        await pool.stop()


RSS_SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    from app.engine.engine import EngineConfig
    from app.engine.models.loader import LoadConfig
    from app.engine.models.model_catalog import ModelCatalog
    from app.engine.model_pool import ModelPool, PoolConfig

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    async def settled_rss(before, within_s=2.0):
        # Threads of the unloaded engine may still be ending: give its memory a moment to go back.
        deadline = asyncio.get_running_loop().time() + within_s
        while rss() > before * 1.10 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        return rss()

    async def main(default_dir, models_dir):
        config = EngineConfig(LoadConfig(default_dir, dtype="float32", quantization="none"), "tiny")
        pool = ModelPool(ModelCatalog(config, models_dir), PoolConfig())
        await pool.start()
        figures = {"before": rss(), "loaded": [], "after": []}
        for _ in range(3):
            await pool.load("mid")
            figures["loaded"].append(rss())
            await pool.unload("mid")
            figures["after"].append(await settled_rss(figures["before"]))
        await pool.stop()
        print(json.dumps(figures))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def test_unloading_gives_the_memory_back(tiny_model_dir, tmp_path):
    """RSS after each unload is within 10% of RSS before the first load, at most 2 s later (loaded 3
    times: no creep)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = build_tiny_model(tmp_path / "models" / "mid")
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=4)
    LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(folder)  # ~90 MB of fp32 weights
    result = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tiny_model_dir), str(tmp_path / "models")],
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    before = figures["before"]
    assert min(figures["loaded"]) - before > 60 << 20, figures  # the load itself was visible
    assert max(figures["after"]) <= before * 1.10, figures
