"""The decode loop without HTTP: EngineCore driven synchronously in this process.

Same model, device and dtype as the server (app.config.Settings), the core built the way
Engine._attach builds it, the same short prompt, greedy, the same max_tokens. Reports TTFT and
per-stream decode tokens/s (defined as in the HTTP table) after one warm-up run, and optionally
aggregate tokens/s for bigger batches:

    python -m bench.inprocess --max-tokens 64 --batch-sizes 1 4 16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from app.config import Settings
from app.engine.core import EngineCore, build_core
from app.engine.detokenizer import IncrementalDetokenizer
from app.engine.engine import EngineConfig
from app.engine.loader import LoadedModel, load
from app.engine.prompts import PromptEncoder
from app.engine.sequence import Sequence
from app.engine.types import SamplingParams
from bench.prompts import PROMPTS
from bench.stats import decode_rate, fmt, ms, percentile

clock = time.perf_counter


def new_sequence(loaded: LoadedModel, request_id: str, prompt_ids: list[int], max_tokens: int,
                 times: list[tuple[float, int, str]]) -> Sequence:
    """A greedy sequence (as Engine._new_sequence builds it) whose sink records (time, tokens, text)."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    return Sequence(request_id=request_id, prompt_ids=list(prompt_ids), params=params,
                    eos_token_ids=frozenset(loaded.eos_token_ids),
                    detokenizer=IncrementalDetokenizer(loaded.tokenizer, prompt_ids), generator=None,
                    sink=lambda e: times.append((clock(), e.num_completion_tokens, e.text)))


def run_batch(core: EngineCore, loaded: LoadedModel, prompt_ids: list[int], max_tokens: int,
              batch: int) -> dict:
    """Add `batch` identical requests at once and step until done; per-stream and aggregate numbers."""
    events: list[list[tuple[float, int, str]]] = [[] for _ in range(batch)]
    start = clock()
    for i in range(batch):
        core.add(new_sequence(loaded, f"bench-{batch}-{i}", prompt_ids, max_tokens, events[i]))
    with torch.inference_mode():
        while core.has_work:
            core.step()
    wall = clock() - start
    streams = [stream_numbers(start, e) for e in events]
    tokens = sum(s["tokens"] for s in streams)
    return {"batch": batch, "wall_s": wall, "completion_tokens": tokens, "agg_tok_s": tokens / wall,
            "ttft_ms_p50": ms(percentile([s["ttft_s"] for s in streams], 50)),
            "stream_tok_s_p50": percentile([s["tok_s"] for s in streams if s["tok_s"]], 50),
            "e2e_tok_s_p50": percentile([s["tokens"] / wall for s in streams], 50)}


def stream_numbers(start: float, events: list[tuple[float, int, str]]) -> dict:
    """TTFT and decode rate from the events that carried text, as the HTTP client would see them."""
    content = [t for t, _, text in events if text]
    tokens = events[-1][1] if events else 0
    first = content[0] if content else None
    return {"tokens": tokens, "ttft_s": (first - start) if first else None,
            "tok_s": decode_rate(tokens, first, content[-1] if content else None)}


def measure(loaded: LoadedModel, config: EngineConfig, max_tokens: int, batch_sizes: list[int],
            repeats: int) -> dict:
    """One unmeasured warm-up, then `repeats` single-stream runs (medians) and each bigger batch once."""
    core = build_core(loaded, config.scheduler, config.prefix_cache)
    prompt_ids = PromptEncoder(loaded.tokenizer, core.vocab_size).encode_text(PROMPTS["short"])
    run_batch(core, loaded, prompt_ids, max_tokens, 1)
    singles = [run_batch(core, loaded, prompt_ids, max_tokens, 1) for _ in range(repeats)]
    batches = [run_batch(core, loaded, prompt_ids, max_tokens, b) for b in batch_sizes if b > 1]
    return {
        "model": config.load.model, "device": str(loaded.device), "dtype": str(loaded.dtype),
        "torch_threads": torch.get_num_threads(), "prompt_tokens": len(prompt_ids), "max_tokens": max_tokens,
        "completion_tokens": singles[0]["completion_tokens"],
        "ttft_ms_p50": percentile([s["ttft_ms_p50"] for s in singles], 50),
        "stream_tok_s_p50": percentile([s["stream_tok_s_p50"] for s in singles], 50),
        "e2e_tok_s_p50": percentile([s["e2e_tok_s_p50"] for s in singles], 50),
        "single_runs": singles, "batches": batches,
    }


def summary_line(r: dict) -> str:
    """The one-line text summary of a measure() result."""
    batches = "; ".join(f"batch {b['batch']}: agg {b['agg_tok_s']:.1f} tok/s" for b in r["batches"])
    return (f"in-process ({r['device']}, {r['dtype']}, {r['torch_threads']} threads, "
            f"{r['prompt_tokens']}-token prompt, {r['completion_tokens']} tokens out): "
            f"TTFT p50 {fmt(r['ttft_ms_p50'])} ms, decode {fmt(r['stream_tok_s_p50'])} tok/s/stream, "
            f"end-to-end {fmt(r['e2e_tok_s_p50'])} tok/s" + (f"; {batches}" if batches else ""))


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: settings -> load -> measure -> print and write JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__.split("\n")[0])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="sizes > 1 add batch runs")
    p.add_argument("--repeats", type=int, default=3, help="measured single-stream runs")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    config = Settings().engine_config()
    started = clock()
    loaded = load(config.load)
    result = measure(loaded, config, args.max_tokens, args.batch_sizes, args.repeats)
    result["load_s"] = clock() - started
    print(summary_line(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
