"""The decode loop without HTTP: EngineCore driven synchronously in this process.

Same model, device and dtype as the server (app.config.Settings), the core built the way
Engine._attach builds it, the same short prompt, greedy, the same max_tokens. Reports TTFT and
per-stream decode tokens/s (defined as in the HTTP table) after one warm-up run, and optionally
aggregate tokens/s for bigger batches (identical requests added at once) and for closed loops of
clients that send numbered requests back to back, as the HTTP scenarios do:

    python -m bench.inprocess --max-tokens 64 --batch-sizes 1 4 16 --clients 16 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from app.config import Settings
from app.engine.core import EngineCore, build_core
from app.engine.text.detokenizer import IncrementalDetokenizer
from app.engine.engine import EngineConfig
from app.engine.models.loader import LoadedModel, load
from app.engine.text.prompts import PromptEncoder
from app.engine.scheduling.sequence import Sequence
from app.engine.types import SamplingParams
from bench.client import numbered as numbered_request
from bench.prompts import PROMPTS
from bench.stats import decode_rate, fmt, ms, percentile

clock = time.perf_counter


def new_sequence(loaded: LoadedModel, request_id: str, prompt_ids: list[int], max_tokens: int,
                 times: list[tuple], finished_marker: bool = False, ignore_eos: bool = False) -> Sequence:
    """A greedy sequence (as Engine._new_sequence builds it) whose sink records (time, tokens, text),
    and with `finished_marker` whether that event was its last; `ignore_eos` runs it to max_tokens."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)

    def sink(event) -> None:
        record = (clock(), event.num_completion_tokens, event.text)
        times.append((*record, event.finish_reason is not None) if finished_marker else record)

    return Sequence(request_id=request_id, prompt_ids=list(prompt_ids), params=params,
                    eos_token_ids=frozenset(loaded.eos_token_ids),
                    detokenizer=IncrementalDetokenizer(loaded.tokenizer, prompt_ids), generator=None, sink=sink)


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


def run_clients(core: EngineCore, loaded: LoadedModel, encoder: PromptEncoder, max_tokens: int, clients: int,
                requests_per_client: int) -> dict:
    """`clients` streams that each send `requests_per_client` requests back to back, as the HTTP load
    generator's clients do (numbered prompts, so no two share a prefix; EOS ends a request): the
    in-process baseline for a concurrency scenario. Aggregate tok/s = all tokens ÷ wall time."""
    numbers = itertools.count(1)
    left = dict.fromkeys(range(clients), requests_per_client)
    running: dict[int, list] = {}  # client -> its current request's events
    tokens = 0

    def send(client: int) -> None:
        left[client] -= 1
        ids = encoder.encode_text(numbered(f"{clients}.{next(numbers)}"))
        running[client] = []
        core.add(new_sequence(loaded, f"client-{client}-{left[client]}", ids, max_tokens, running[client],
                              finished_marker=True))

    start = clock()
    for client in left:
        send(client)
    with torch.inference_mode():
        while core.has_work:
            core.step()
            for client, events in list(running.items()):
                if events and events[-1][3]:  # finished: its client sends the next one
                    tokens += events[-1][1]
                    del running[client]
                    if left[client]:
                        send(client)
    wall = clock() - start
    return {"clients": clients, "requests_per_client": requests_per_client, "wall_s": wall,
            "completion_tokens": tokens, "agg_tok_s": tokens / wall}


def numbered(label: str) -> str:
    return numbered_request(PROMPTS["short"], label)  # as the HTTP load generator numbers its requests


def stream_numbers(start: float, events: list[tuple[float, int, str]]) -> dict:
    """TTFT and decode rate from the events that carried text, as the HTTP client would see them."""
    content = [t for t, _, text in events if text]
    tokens = events[-1][1] if events else 0
    first = content[0] if content else None
    return {"tokens": tokens, "ttft_s": (first - start) if first else None,
            "tok_s": decode_rate(tokens, first, content[-1] if content else None)}


def measure(loaded: LoadedModel, config: EngineConfig, max_tokens: int, batch_sizes: list[int],
            repeats: int, clients: list[int] = (), requests_per_client: int = 4) -> dict:
    """One unmeasured warm-up, then `repeats` single-stream runs (medians), each bigger batch once, and
    each client count's closed loop once."""
    core = build_core(loaded, config.scheduler, config.prefix_cache, config.speculation)
    encoder = PromptEncoder(loaded.tokenizer, core.vocab_size)
    prompt_ids = encoder.encode_text(PROMPTS["short"])
    run_batch(core, loaded, encoder.encode_text(numbered("w.1")), max_tokens, 1)
    # The texts the HTTP load generator sends its 1-stream scenario: the same answers on both sides.
    single_prompts = [encoder.encode_text(numbered(f"1.{number}")) for number in range(1, repeats + 1)]
    singles = [run_batch(core, loaded, ids, max_tokens, 1) for ids in single_prompts]
    batches = [run_batch(core, loaded, prompt_ids, max_tokens, b) for b in batch_sizes if b > 1]
    loops = [run_clients(core, loaded, encoder, max_tokens, c, requests_per_client) for c in clients]
    return {
        "model": config.load.model, "device": str(loaded.device), "dtype": str(loaded.dtype),
        "torch_threads": torch.get_num_threads(), "prompt_tokens": len(single_prompts[0]), "max_tokens": max_tokens,
        "speculation": core.speculation,
        "completion_tokens": singles[0]["completion_tokens"],
        "ttft_ms_p50": percentile([s["ttft_ms_p50"] for s in singles], 50),
        "stream_tok_s_p50": percentile([s["stream_tok_s_p50"] for s in singles], 50),
        "e2e_tok_s_p50": percentile([s["e2e_tok_s_p50"] for s in singles], 50),
        "single_runs": singles, "batches": batches, "clients": loops,
    }


def summary_line(r: dict) -> str:
    """The one-line text summary of a measure() result."""
    batches = "; ".join([f"batch {b['batch']}: agg {b['agg_tok_s']:.1f} tok/s" for b in r["batches"]]
                        + [f"{c['clients']} clients x {c['requests_per_client']} requests: agg {c['agg_tok_s']:.1f} tok/s"
                           for c in r.get("clients", [])])
    return (f"in-process ({r['device']}, {r['dtype']}, {r['torch_threads']} threads, "
            f"speculation {'on' if r.get('speculation') else 'off'}, "
            f"{r['prompt_tokens']}-token prompt, {r['completion_tokens']} tokens out): "
            f"TTFT p50 {fmt(r['ttft_ms_p50'])} ms, decode {fmt(r['stream_tok_s_p50'])} tok/s/stream, "
            f"end-to-end {fmt(r['e2e_tok_s_p50'])} tok/s" + (f"; {batches}" if batches else ""))


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: settings -> load -> measure -> print and write JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__.split("\n")[0])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="sizes > 1 add batch runs")
    p.add_argument("--repeats", type=int, default=3, help="measured single-stream runs")
    p.add_argument("--clients", type=int, nargs="*", default=[],
                   help="closed loops: this many clients sending requests back to back, as the HTTP scenarios do")
    p.add_argument("--requests-per-client", type=int, default=4)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    config = Settings().engine_config()
    started = clock()
    loaded = load(config.load)
    result = measure(loaded, config, args.max_tokens, args.batch_sizes, args.repeats, args.clients,
                     args.requests_per_client)
    result["load_s"] = clock() - started
    print(summary_line(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
