"""Many models in one server: what loading on demand costs, and what it costs the others.

    .venv/bin/python -m bench.models                 # builds its models folder in a temp dir
    .venv/bin/python -m bench.models --models-dir D  # your own folder (each model is loaded once)

A fresh `python -m app` serves the default model plus a models folder (by default: a hard-linked copy
of the default model, the same 135M weights under another name, and two random Llamas with its
tokenizer, 2 layers of 64 and 8 layers of 512). Then, per folder model, one streamed chat request names
it while it is unloaded: its time to first token (the load included), the load's own time (`/health`),
and the server's RSS before the load, once loaded and after `POST /models/unload`. Last, interference:
a stream of the default model runs while the largest folder model loads; its token gaps before and
during the load, and the time to first token of a new default-model request sent during the load (and of the same
request sent a second earlier, with no load in progress).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.client import RequestResult, stream_request
from bench.peers import RESULTS, ROOT, launch, stop, tree_rss_mib
from bench.stats import fmt, ms, percentile

DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
NO_EOS = {"0": -100, "1": -100, "2": -100}  # the default tokenizer's special tokens: run to max_tokens


def random_llama(folder: Path, hidden: int, layers: int, seed: int) -> None:
    """A random Llama with the default model's tokenizer (as a fine-tune of another size would ship)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (DEFAULT_MODEL / name).exists():
            shutil.copy(DEFAULT_MODEL / name, folder / name)
    source = json.loads((DEFAULT_MODEL / "config.json").read_text())
    config = LlamaConfig(vocab_size=source["vocab_size"], hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=source.get("bos_token_id"), eos_token_id=source.get("eos_token_id"))
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)


def build_models_dir(root: Path) -> Path:
    folder = root / "models"
    folder.mkdir()
    shutil.copytree(DEFAULT_MODEL, folder / "smol-copy", copy_function=os.link)  # hard links: no disk
    random_llama(folder / "random-64x2", 64, 2, seed=1)
    random_llama(folder / "random-512x8", 512, 8, seed=2)
    return folder


def start_server(models_dir: Path, port: int, stamp: str) -> tuple[str, object]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOKENWIRE_")}
    env |= {"TOKENWIRE_MODELS_DIR": str(models_dir), "TOKENWIRE_PORT": str(port),
            "TOKENWIRE_MAX_LOADED_MODELS": "0"}
    proc = launch([sys.executable, "-m", "app"], env, RESULTS / f"{stamp}-models-server.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{url}/health", timeout=2).json()
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200 and health["start_up_chores"] == 0:
                return url, proc
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    stop(proc)
    raise TimeoutError("the server did not become ready")


def chat_body(model: str, max_tokens: int) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Tell me about lighthouses."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "logit_bias": NO_EOS}


async def streamed(url: str, model: str, max_tokens: int) -> RequestResult:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        results: list[RequestResult] = []
        return await stream_request(client, "/v1/chat/completions", chat_body(model, max_tokens), results)


def model_health(url: str, name: str) -> dict:
    return next(m for m in httpx.get(f"{url}/health", timeout=10).json()["models"] if m["name"] == name)


def measure_load(url: str, pid: int, name: str) -> dict:
    """One request that loads `name`: its TTFT, the load's time, RSS before, loaded and after unload."""
    before = tree_rss_mib(pid)
    result = asyncio.run(streamed(url, name, 16))
    loaded = tree_rss_mib(pid)
    load_s = model_health(url, name).get("load_seconds")
    httpx.post(f"{url}/models/unload", json={"model": name}, timeout=60).raise_for_status()
    time.sleep(0.5)
    return {"model": name, "error": result.error, "ttft_ms": first_token_ms(result), "load_ms": ms(load_s), "rss_before_mib": before,
            "rss_loaded_mib": loaded, "rss_after_unload_mib": tree_rss_mib(pid)}


async def interference(url: str, default: str, loading: str) -> dict:
    """A default-model stream's token gaps before and during `loading`'s load; a new request's TTFT then."""
    running = asyncio.create_task(streamed(url, default, 400))
    await asyncio.sleep(1.0)
    alone = await streamed(url, default, 4)  # the same newcomer with no load in progress
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        load_started = time.perf_counter()
        load = asyncio.create_task(client.post("/models/load", json={"model": loading}))
        await asyncio.sleep(0.05)
        newcomer = await streamed(url, default, 4)
        await load
        load_ended = time.perf_counter()
    stream = await running
    httpx.post(f"{url}/models/unload", json={"model": loading}, timeout=60)
    times = stream.chunk_times
    gaps_before = [b - a for a, b in zip(times, times[1:]) if b < load_started and a > alone.t_end]
    gaps_during = [b - a for a, b in zip(times, times[1:]) if load_started <= b <= load_ended + 0.001]
    return {"loading": loading, "load_ms": ms(load_ended - load_started),
            "gap_p50_before_ms": ms(percentile(gaps_before, 50)), "gap_max_before_ms": ms(max(gaps_before)),
            "gap_p50_during_ms": ms(percentile(gaps_during, 50)) if gaps_during else None,
            "gap_max_during_ms": ms(max(gaps_during)) if gaps_during else None, "gaps_during": len(gaps_during),
            "newcomer_ttft_ms": first_token_ms(newcomer), "newcomer_ttft_without_load_ms": first_token_ms(alone),
            "errors": [e for e in (stream.error, newcomer.error, alone.error) if e]}


def first_token_ms(result: RequestResult) -> float | None:
    return ms(result.chunk_times[0] - result.t_start) if result.chunk_times else None


def report(loads: list[dict], mixed: dict, idle_rss: float) -> str:
    lines = [f"idle RSS with the default model: {idle_rss:.0f} MiB", "",
             "| model | TTFT incl. load ms | load ms | RSS before MiB | loaded MiB | after unload MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {fmt(r['ttft_ms'], 0)} | {fmt(r['load_ms'], 0)} | {r['rss_before_mib']:.0f} | "
              f"{r['rss_loaded_mib']:.0f} | {r['rss_after_unload_mib']:.0f} |" for r in loads]
    lines += ["", f"while {mixed['loading']} loads ({fmt(mixed['load_ms'], 0)} ms): the default model's stream "
              f"gaps p50/max {fmt(mixed['gap_p50_before_ms'])}/{fmt(mixed['gap_max_before_ms'])} ms before, "
              f"{fmt(mixed['gap_p50_during_ms'])}/{fmt(mixed['gap_max_during_ms'])} ms during "
              f"({mixed['gaps_during']} gaps); a new default-model request's TTFT {fmt(mixed['newcomer_ttft_ms'])} ms "
              f"(without a load: {fmt(mixed['newcomer_ttft_without_load_ms'])} ms)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, help="a models folder (default: built in a temp dir)")
    parser.add_argument("--port", type=int, default=8093)
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        models_dir = args.models_dir or build_models_dir(Path(scratch))
        names = sorted(p.stem if p.suffix == ".gguf" else p.name for p in models_dir.iterdir()
                       if p.suffix == ".gguf" or (p / "config.json").is_file())
        url, proc = start_server(models_dir, args.port, stamp)
        try:
            default = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
            idle_rss = tree_rss_mib(proc.pid)
            loads = [measure_load(url, proc.pid, name) for name in names]
            largest = max(loads, key=lambda r: r["rss_loaded_mib"] - r["rss_before_mib"])["model"]
            mixed = asyncio.run(interference(url, default, largest))
        finally:
            stop(proc)
    text = report(loads, mixed, idle_rss)
    print(text)
    path = RESULTS / f"{stamp}-models.json"
    path.write_text(json.dumps({"loads": loads, "interference": mixed, "idle_rss_mib": idle_rss}, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
