"""Perplexity of the model on a fixed English text (bench/ppl_text.py), per dtype and quantization.

A lossy speed lever (low-bit weight copies) may become a default only while its perplexity stays
within 3% of fp32's; `make bench` prints these next to the speeds so nobody trades quality by accident.
The copies normally serve only small decode steps; here they serve every position, so the number is
what a request decoded with them would score. `auto` is what the server does by default.

    python -m bench.perplexity [--configs float32:none bfloat16:int8 bfloat16:int4 bfloat16:auto] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F

from app.config import Settings
from app.engine.loader import LoadConfig, LoadedModel, load
from app.engine.quantization import apply_quantization
from app.engine.slab_cache import slab_cache
from bench.ppl_text import TEXT

CHUNK = 256  # tokens per forward: the cache carries the context across chunks
EVERY_STEP = 1 << 30  # a copy_max_rows that sends every matmul through the low-bit copies


@torch.inference_mode()
def perplexity(loaded: LoadedModel, ids: list[int]) -> float:
    """exp(mean negative log-likelihood) of ids[1:] given the ids before each."""
    cache = slab_cache(loaded.model.config)
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, CHUNK):
        chunk = torch.tensor([ids[start:start + CHUNK]], device=loaded.device)
        positions = torch.arange(start, start + chunk.shape[1], device=loaded.device).unsqueeze(0)
        if loaded.fused is not None:
            logits = loaded.fused.forward(chunk, None, positions, cache, last_only=False, use_copies=True)[0]
        else:
            logits = loaded.model(input_ids=chunk, position_ids=positions, cache=cache, use_cache=True).logits[0]
        targets = torch.tensor(ids[start + 1:start + 1 + chunk.shape[1]], device=loaded.device)
        logits = logits[: len(targets)].float()
        nll += float(F.cross_entropy(logits, targets, reduction="sum"))
        count += len(targets)
    return math.exp(nll / count)


def measure(model: str, configs: list[str], fused_forward: bool = True) -> list[dict]:
    """One row per "dtype:quantization" config, with its ratio to the first row."""
    rows = []
    for config in configs:
        dtype, quantization = config.split(":")
        loaded = load(LoadConfig(model, dtype=dtype, quantization="none", fused_forward=fused_forward))
        if quantization != "none":
            apply_quantization(loaded.fused, quantization, EVERY_STEP, loaded.dtype, loaded.device)
        ids = loaded.tokenizer.encode(TEXT)
        rows.append({"config": config, "forward": loaded.runtime.forward, "tokens": len(ids),
                     "perplexity": perplexity(loaded, ids)})
    for row in rows:
        row["vs_first"] = row["perplexity"] / rows[0]["perplexity"]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| dtype:quantization | forward | tokens | perplexity | vs " + rows[0]["config"] + " |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['config']} | {r['forward']} | {r['tokens']} | {r['perplexity']:.2f} | {r['vs_first']:.3f} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perplexity", description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["float32:none", "bfloat16:none", "bfloat16:int8", "float32:int8",
                                                    "bfloat16:int4", "bfloat16:auto"])
    p.add_argument("--transformers-forward", action="store_true", help="measure without the fused forward")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    rows = measure(Settings().model, args.configs, fused_forward=not args.transformers_forward)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
