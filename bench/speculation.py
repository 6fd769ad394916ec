"""Prompt-lookup speculation on and off, one stream, in-process: copy-heavy work and everything else.

The same model, device and dtype as the server (app.config.Settings). Each workload is one chat or
completion request run to its end (max_tokens, or EOS where the workload allows it), in rounds that
alternate between a core without drafts and one with them (off-on, on-off, ...), so drift on a
shared machine hits both alike. Reported per workload: decode tokens/s both ways (tokens after the
first ÷ time from the first token to the last, medians over rounds), the ratio, how many drafted
tokens were kept, and whether both ways gave the same tokens (they must: speculation is lossless).
Medians of identical runs differ by about ±3% here, so a ratio within that is no difference.

    python -m bench.speculation --rounds 4 --max-tokens 128 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import torch

from app.config import Settings
from app.engine.core import build_core
from app.engine.text.detokenizer import IncrementalDetokenizer
from app.engine.models.loader import LoadedModel, load
from app.engine.text.prompts import PromptEncoder
from app.engine.sampler import make_generator
from app.engine.scheduling.sequence import Sequence
from app.engine.types import SamplingParams
from bench.client import numbered
from bench.ppl_text import TEXT
from bench.prompts import PROMPTS
from bench.stats import percentile

clock = time.perf_counter

CODE = '''def parse_line(line, separator=","):
    fields = []
    current = ""
    quoted = False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            fields.append(current)
            current = ""
        else:
            current += char
    fields.append(current)
    return fields


def read_table(path, separator=","):
    rows = []
    with open(path) as handle:
        for line in handle:
            rows.append(parse_line(line.rstrip("\\n"), separator))
    return rows
'''
PARAGRAPH = TEXT.split("\n\n")[2].replace("\n", " ")


@dataclass(frozen=True)
class Workload:
    name: str
    copies: bool  # the answer is expected to repeat its input (where drafts should pay)
    chat: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    ban_eos: bool = False  # as bench.peers bans it: logit_bias -100 on the model's EOS tokens


WORKLOADS = (
    Workload("edit code (chat)", True, chat="Rename `fields` to `columns` in this code and show the whole "
             f"code:\n\n```python\n{CODE}```"),
    Workload("quote a text (chat)", True, chat=f"Repeat this paragraph word for word:\n\n{PARAGRAPH}"),
    Workload("summarise a text (chat)", True, chat=f"Summarise this paragraph in two sentences:\n\n{PARAGRAPH}"),
    Workload("open question (chat)", False, chat="Write a short story about a dragon who learns to cook."),
    Workload("open question, sampled (chat)", False, temperature=0.8,
             chat="Write a short story about a dragon who learns to cook."),
    # bench.peers' first 1-stream request, word for word.
    Workload("completion, EOS banned (bench.peers)", False, prompt=numbered(PROMPTS["short"], "1.1"), ban_eos=True),
)


def prompt_ids(loaded: LoadedModel, workload: Workload) -> list[int]:
    encoder = PromptEncoder(loaded.tokenizer, loaded.dims.vocab_size)
    if workload.chat is not None:
        return encoder.encode_chat([{"role": "user", "content": workload.chat}])
    return encoder.encode_text(workload.prompt)


def run_once(loaded: LoadedModel, settings: Settings, workload: Workload, ids: list[int], max_tokens: int,
             speculation: bool) -> dict:
    """One request on a fresh core: its token ids, decode tokens/s and the drafts kept."""
    core = build_core(loaded, settings.engine_config().scheduler, None, speculation)
    banned = tuple((eos, -100.0) for eos in loaded.eos_token_ids) if workload.ban_eos else ()
    params = SamplingParams(temperature=workload.temperature, seed=7, max_tokens=max_tokens, logit_bias=banned)
    times: list[float] = []
    tokens: list[int] = []

    def sink(event) -> None:
        times.extend(clock() for _ in event.token_ids)  # a step may bring several tokens
        tokens.extend(event.token_ids)

    generator = None if params.is_greedy else make_generator(params.seed, loaded.device)
    core.add(Sequence("spec", list(ids), params, frozenset(loaded.eos_token_ids),
                      IncrementalDetokenizer(loaded.tokenizer, ids), generator, sink))
    with torch.inference_mode():
        while core.has_work:
            core.step()
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    return {"tokens": tokens, "tok_s": rate, "drafted": core.drafted_tokens, "accepted": core.accepted_drafts}


def measure(loaded: LoadedModel, settings: Settings, rounds: int, max_tokens: int) -> list[dict]:
    results = []
    for workload in WORKLOADS:
        ids = prompt_ids(loaded, workload)
        run_once(loaded, settings, workload, ids, 8, True)  # warm-up: first-call costs
        off, on = [], []
        for round_ in range(rounds):  # off-on, then on-off: neither side always runs second
            for speculation in ((False, True) if round_ % 2 == 0 else (True, False)):
                (on if speculation else off).append(run_once(loaded, settings, workload, ids, max_tokens, speculation))
        off_rate = percentile([r["tok_s"] for r in off], 50)
        on_rate = percentile([r["tok_s"] for r in on], 50)
        results.append({"workload": workload.name, "copies": workload.copies, "prompt_tokens": len(ids),
                        "tokens": len(on[0]["tokens"]), "off_tok_s": off_rate, "on_tok_s": on_rate,
                        "ratio": on_rate / off_rate if off_rate else 0.0,
                        "drafted": on[0]["drafted"], "accepted": on[0]["accepted"],
                        "same_tokens": all(r["tokens"] == off[0]["tokens"] for r in off + on),
                        "off_rounds": [r["tok_s"] for r in off], "on_rounds": [r["tok_s"] for r in on]})
    return results


def table(results: list[dict]) -> str:
    lines = ["| workload | prompt / out tokens | off tok/s | on tok/s | on ÷ off | drafts kept | same tokens |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        kept = f"{r['accepted']}/{r['drafted']}" if r["drafted"] else "-"
        lines.append(f"| {r['workload']} | {r['prompt_tokens']} / {r['tokens']} | {r['off_tok_s']:.1f} | "
                     f"{r['on_tok_s']:.1f} | {r['ratio']:.2f} | {kept} | {'yes' if r['same_tokens'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.speculation", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=4, help="off/on pairs per workload, in alternating order")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    settings = Settings()
    loaded = load(settings.engine_config().load)
    if not build_core(loaded, settings.engine_config().scheduler, None).speculation:
        raise SystemExit(f"no speculation on this forward ({loaded.runtime.forward}): nothing to compare")
    results = measure(loaded, settings, args.rounds, args.max_tokens)
    print(f"prompt-lookup speculation, one stream ({loaded.device}, {loaded.dtype}, "
          f"{loaded.runtime.forward}):\n" + table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
