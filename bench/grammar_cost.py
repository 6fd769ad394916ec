"""What constrained decoding adds to a decode step, in-process, at 1 and 16 rows.

The same model, device and dtype as the server (app.config.Settings). For each row count, rounds
alternate between plain rows and rows that all follow a JSON schema (an array of objects, so the
grammar keeps moving through structure, not only string contents); every round prefills, then times
each decode step with every row running. The grammar's share (mask fill + apply) is timed apart.

    python -m bench.grammar_cost --rows 1 16 --steps 48 --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import torch

from app.config import Settings
from app.engine import core as core_module
from app.engine.core import build_core
from app.engine.text.detokenizer import IncrementalDetokenizer
from app.engine.text.grammar import CompiledGrammar, GrammarCompiler
from app.engine.models.loader import LoadedModel, load
from app.engine.text.prompts import PromptEncoder
from app.engine.scheduling.sequence import Sequence
from app.engine.types import Constraint, SamplingParams
from bench.stats import percentile

clock = time.perf_counter
SCHEMA = {"type": "array", "minItems": 64, "items": {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "email": {"type": "string", "format": "email"}, "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}},
    "active": {"type": "boolean"}}, "required": ["name", "age", "active"], "additionalProperties": False}}
PROMPT = "List the members of the chess club as JSON."


def _sequences(loaded: LoadedModel, prompt_ids: list[int], rows: int, steps: int,
               grammar: CompiledGrammar | None) -> list[Sequence]:
    # Sampled (seeded) rather than greedy: a greedy small model repeats itself inside one string. Plain
    # rows ignore EOS so they run as many steps as the constrained ones (whose schema cannot end early).
    params = SamplingParams(temperature=1.0, seed=0, max_tokens=steps + 1, ignore_eos=grammar is None)
    return [Sequence(f"g{row}", list(prompt_ids), params, frozenset(loaded.eos_token_ids),
                     IncrementalDetokenizer(loaded.tokenizer, prompt_ids), torch.Generator().manual_seed(row),
                     lambda event: None, matcher=None if grammar is None else grammar.matcher())
            for row in range(rows)]


def time_round(loaded: LoadedModel, settings: Settings, prompt_ids: list[int], rows: int, steps: int,
               grammar: CompiledGrammar | None) -> dict:
    """Median decode-step time with `rows` rows all running, and the grammar's own time per step."""
    config = settings.engine_config()
    core = build_core(loaded, config.scheduler, None)
    for sequence in _sequences(loaded, prompt_ids, rows, steps, grammar):
        core.add(sequence)
    grammar_s: list[float] = []
    original = core_module.apply_grammars

    def timed(matchers, logits):
        started = clock()
        try:
            return original(matchers, logits)
        finally:
            grammar_s.append(clock() - started)

    step_s = []
    with torch.inference_mode(), mock.patch.object(core_module, "apply_grammars", timed):
        while core.has_work and len(core.store.rows) < rows:
            core.step()  # prefill
        grammar_s.clear()
        while core.has_work and len(core.store.rows) == rows:
            started = clock()
            core.step()
            step_s.append(clock() - started)
    return {"step_ms": percentile([s * 1e3 for s in step_s], 50), "steps": len(step_s),
            "grammar_ms": percentile([s * 1e3 for s in grammar_s], 50) if grammar_s else 0.0}


def measure(loaded: LoadedModel, settings: Settings, row_counts: list[int], steps: int, rounds: int) -> list[dict]:
    compiler = GrammarCompiler(loaded.tokenizer, loaded.dims.vocab_size,
                               loaded.eos_token_ids)
    started = clock()
    compiler.compile(Constraint("json_schema", json.dumps(SCHEMA)))  # the first also indexes the vocabulary
    first_compile_ms = (clock() - started) * 1e3
    started = clock()
    grammar = compiler.compile(Constraint("json_schema", json.dumps(SCHEMA)))
    compile_ms = (clock() - started) * 1e3
    prompt_ids = PromptEncoder(loaded.tokenizer, compiler.vocab_size).encode_chat([{"role": "user", "content": PROMPT}])
    time_round(loaded, settings, prompt_ids, 1, 4, grammar)  # warm-up: first-call costs of both paths
    time_round(loaded, settings, prompt_ids, 1, 4, None)
    results = []
    for rows in row_counts:
        plain, constrained = [], []
        for _ in range(rounds):  # alternating, so drift on a shared machine hits both alike
            plain.append(time_round(loaded, settings, prompt_ids, rows, steps, None))
            constrained.append(time_round(loaded, settings, prompt_ids, rows, steps, grammar))
        plain_ms = percentile([r["step_ms"] for r in plain], 50)
        constrained_ms = percentile([r["step_ms"] for r in constrained], 50)
        results.append({"rows": rows, "plain_step_ms": plain_ms, "constrained_step_ms": constrained_ms,
                        "overhead_pct": 100 * (constrained_ms / plain_ms - 1),
                        "grammar_ms_per_step": percentile([r["grammar_ms"] for r in constrained], 50),
                        "first_compile_ms": first_compile_ms, "compile_ms": compile_ms, "rounds": rounds,
                        "steps": steps, "plain_rounds": plain, "constrained_rounds": constrained})
    return results


def table(results: list[dict]) -> str:
    lines = ["| rows | step, plain | step, JSON schema | added | of which mask fill + apply |",
             "|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['rows']} | {r['plain_step_ms']:.1f} ms | {r['constrained_step_ms']:.1f} ms | "
                     f"{r['overhead_pct']:+.1f}% | {r['grammar_ms_per_step']:.2f} ms |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.grammar_cost", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    p.add_argument("--steps", type=int, default=48, help="decode steps timed per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    settings = Settings()
    loaded = load(settings.engine_config().load)
    results = measure(loaded, settings, args.rows, args.steps, args.rounds)
    print(f"constrained decoding ({loaded.device}, {loaded.dtype}, {torch.get_num_threads()} threads; "
          f"schema compiled in {results[0]['compile_ms']:.1f} ms, the first in {results[0]['first_compile_ms']:.0f} ms "
          "with indexing the vocabulary):\n" + table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
