"""Sliding-window KV: forgetting (a sliding layer keeps its last columns) vs the mask (every column kept).

    python -m bench.window_kv [--model models/SmolLM2-135M-Instruct] [--window 512]
                              [--contexts 1024,4096] [--streams 1,4] [--steps 32] [--rounds 2]
                              [--dtype auto] [--forward auto|fused] [--json F]

The issue this answers: a sliding-window layer can keep every position's keys and let a mask slide (the
way transformers' forward needs it), or keep only the last `window` positions (a ring; here KVStore's
forgetting, a view dropping old columns every FORGET_STEP steps). Which is faster, and what does it
save? The model is `--model` with a sliding window put into its config (model_type mistral: every layer
slides; Llama weights load as Mistral's), so the shape is a real one, not a tiny test model. For each
context length and stream count, both ways run alternately `--rounds` times on one loaded model: the
streams' prompts (random ids of that length) are prefilled, then `--steps` decode steps are timed one by
one; tok/s = streams / the median step. `KV MiB` is the most the decode batch's store held meanwhile.
Answers are not compared here: tests/engine/test_window_kv.py proves both ways give the same tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from app.engine.core import build_core
from app.engine.models.loader import LoadConfig, load
from app.engine.scheduling.scheduler import SchedulerConfig
from app.engine.scheduling.sequence import Sequence
from app.engine.text.detokenizer import IncrementalDetokenizer
from app.engine.types import SamplingParams


def windowed_folder(model: Path, window: int, into: Path) -> Path:
    """`model`'s files linked into `into`, its config made a Mistral one with this sliding window."""
    for item in model.iterdir():
        if item.name != "config.json" and not item.name.startswith("."):
            (into / item.name).symlink_to(item.resolve())
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=window)
    (into / "config.json").write_text(json.dumps(config))
    return into


def _sequences(loaded, streams: int, context: int, steps: int, seed: int) -> list[Sequence]:
    rng = random.Random(seed)
    # Long enough that no row ends before the timed steps do (the first decodes while the others prefill).
    params = SamplingParams(temperature=0, max_tokens=steps + streams + 4, ignore_eos=True)
    vocab = loaded.dims.vocab_size
    sequences = []
    for index in range(streams):
        prompt = [rng.randrange(10, vocab) for _ in range(context)]
        sequences.append(Sequence(f"s{index}", prompt, params, frozenset(), IncrementalDetokenizer(loaded.tokenizer, prompt),
                                  None, lambda event: None))
    return sequences


def one_run(loaded, forget: bool, streams: int, context: int, steps: int) -> dict:
    """Decode step times of `streams` rows at `context` columns, the store forgetting or keeping all."""
    budget = max(2048, context)
    # Speculation off: a step is one token per row, on both ways.
    core = build_core(loaded, SchedulerConfig(max_batched_tokens=budget, max_prefill_tokens_while_decoding=budget),
                      speculation=False)
    if not forget:
        core.store.windows = None  # the mask way: every column kept, the window mask slides
    for sequence in _sequences(loaded, streams, context, steps, seed=context + streams):
        core.add(sequence)
    while core.store.num_rows < streams:
        core.step()
    times, kv = [], 0
    for _ in range(steps):
        start = time.perf_counter()
        core.step()
        times.append(time.perf_counter() - start)
        kv = max(kv, core.store.num_bytes)
    assert core.store.num_rows == streams, "every row ran every timed step"
    while core.has_work:
        core.step()
    median = statistics.median(times)
    return {"tok_s": streams / median, "median_ms": median * 1e3, "kv_mib": kv / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--contexts", default="1024,4096")
    parser.add_argument("--streams", default="1,4")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--forward", choices=("auto", "fused"), default="auto",
                        help="fused: the torch forward even where the native kernels could run it")
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = windowed_folder(Path(args.model), args.window, Path(tmp))
        loaded = load(LoadConfig(str(folder), dtype=args.dtype, native_kernels=args.forward == "auto"))
        print(f"# {args.model} as Mistral, window {args.window}, {loaded.dtype}, forward: {loaded.runtime.forward}; "
              f"load average {os.getloadavg()[0]:.2f}")
        rows = []
        for context in (int(c) for c in args.contexts.split(",")):
            for streams in (int(s) for s in args.streams.split(",")):
                results = {"forget": [], "mask": []}
                for _ in range(args.rounds):
                    for way in ("forget", "mask"):
                        results[way].append(one_run(loaded, way == "forget", streams, context, args.steps))
                row = {"context": context, "streams": streams}
                for way, runs in results.items():
                    row[way] = {"tok_s": statistics.median(r["tok_s"] for r in runs), "kv_mib": runs[-1]["kv_mib"],
                                "each_tok_s": [round(r["tok_s"], 1) for r in runs]}
                rows.append(row)
                print(f"context {context:6d} streams {streams:3d} | forget {row['forget']['tok_s']:7.1f} tok/s "
                      f"{row['forget']['kv_mib']:7.1f} MiB | mask {row['mask']['tok_s']:7.1f} tok/s "
                      f"{row['mask']['kv_mib']:7.1f} MiB | rounds {row['forget']['each_tok_s']} vs "
                      f"{row['mask']['each_tok_s']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"window": args.window, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
