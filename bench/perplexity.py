"""Perplexity of the model on a fixed English text (bench/ppl_text.py), per forward, dtype and weights.

A lossy speed lever may become a default only while its perplexity stays within 1% of fp32's;
`make bench` prints these next to the speeds so nobody trades quality by accident. The first row,
transformers' own forward in fp32, is the reference; `native:bfloat16:auto` is what the server
does by default on a CPU.

    python -m bench.perplexity [--configs transformers:float32:none native:bfloat16:auto ...] [--json out.json]

Each config is forward:dtype:quantization, forward one of native (the native kernels), fused
(torch's FusedLlama) or transformers; quantization as TOKENWIRE_QUANTIZATION (native only).
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F

from app.config import Settings
from app.engine.models.loader import LoadConfig, LoadedModel, load
from app.engine.runner import ModelRunner
from bench.ppl_text import TEXT

CHUNK = 256  # tokens per forward: the cache carries the context across chunks
DEFAULT_CONFIGS = ["transformers:float32:none", "native:float32:auto", "native:bfloat16:auto", "native:float32:none",
                   "native:bfloat16:int8", "native:bfloat16:int4", "fused:bfloat16:none"]


@torch.inference_mode()
def perplexity(loaded: LoadedModel, ids: list[int]) -> float:
    """exp(mean negative log-likelihood) of ids[1:] given the ids before each, through the runner."""
    runner = ModelRunner(loaded.model, loaded.device, loaded.fused, loaded.native)
    cache = runner.new_cache()
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, CHUNK):
        chunk = ids[start:start + CHUNK]
        logits = runner.prefill(cache, chunk, start, every_position=True)
        targets = torch.tensor(ids[start + 1:start + 1 + len(chunk)], device=loaded.device)
        nll += float(F.cross_entropy(logits[: len(targets)].float(), targets, reduction="sum"))
        count += len(targets)
    return math.exp(nll / count)


def _load(model: str, config: str) -> LoadedModel:
    forward, dtype, quantization = config.split(":")
    return load(LoadConfig(model, dtype=dtype, quantization=quantization, fused_forward=forward != "transformers",
                           native_kernels=forward == "native"))


def measure(model: str, configs: list[str]) -> list[dict]:
    """One row per config, with its ratio to the first row."""
    rows = []
    for config in configs:
        loaded = _load(model, config)
        ids = loaded.tokenizer.encode(TEXT)
        rows.append({"config": config, "forward": loaded.runtime.forward, "weights": loaded.runtime.quantization,
                     "tokens": len(ids), "perplexity": perplexity(loaded, ids)})
    for row in rows:
        row["vs_first"] = row["perplexity"] / rows[0]["perplexity"]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| forward:dtype:quantization | weights | tokens | perplexity | vs " + rows[0]["config"] + " |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['config']} | {r.get('weights', '')} | {r['tokens']} | {r['perplexity']:.3f} | {r['vs_first']:.4f} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perplexity", description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    rows = measure(Settings().model, args.configs)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
