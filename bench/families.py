"""Per model family, on one tiny random shape: does it start, on which forward, is it exact, how fast.

    python -m bench.families [--families llama,gpt2] [--tokens 64] [--start-runs 2] [--json out.json]

Each family's model is built from its transformers config class (2 layers, hidden 64, 4 heads, 2 KV
heads where the family has GQA, head_dim 16, intermediate 128, 256 positions; random weights, norm
weights random too) with the tests' tiny BPE tokenizer (tests/conftest.py), saved with save_pretrained
into a temp folder, then:

* **start-up**: a fresh `python -c` loads it as the server loads TOKENWIRE_MODEL (Settings ->
  Engine.start: load, attach, warm-up generation) in fp32 on the CPU; `ready s` is the process's launch
  until Engine.start returned, `load s` the loader's `load()` alone (each the min over `--start-runs`). No
  HTTP stack is imported (bench.startup measures `python -m app` to a first answer).
* **starts**: yes, or the one-line refusal (ModelRefused) or error.
* **forward**: `LoadedModel.runtime.forward` (native kernels / fused torch forward / transformers).
* **exact** (in-process, fp32, greedy, EOS ignored): four prompts joined at steps 0, 0, 2 and 5 of one
  core give each the tokens it gets alone (`batched`); a ~90-token prompt run twice on a core with the
  prefix cache gives the same tokens the second time, from a cache hit (`cache hit`); each prompt alone
  with prompt-lookup speculation on gives what it gives with it off (`drafts`).
* **decode tok/s**: greedy, EOS ignored, speculation off, the same ~100-token prompt: 1 stream, and 8
  identical streams added at once; streams ÷ the median step time (prefill step left out), median over
  3 alternating rounds after a warm-up. The median step, not tokens ÷ wall time, because on a shared
  2-core box another process's burst moves a wall time a lot (the JSON keeps tokens ÷ wall for 8 too).
  At this size a step is ~0.1 ms of work: where other processes hold the cores (the header's load
  average), two threads meeting at every OpenMP barrier measure the scheduler (3-60 ms steps seen at a
  load of 5 on 2 cores); `OMP_NUM_THREADS=1 python -m bench.families` then compares the families.

Families whose config class this transformers lacks are reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from app.config import Settings
from app.engine.core import EngineCore, build_core
from app.engine.errors import ModelRefused
from app.engine.models.loader import LoadedModel, load
from app.engine.kv.prefix_cache import PrefixCacheConfig
from app.engine.text.prompts import PromptEncoder
from app.engine.scheduling.scheduler import SchedulerConfig
from app.engine.types import SamplingParams
from bench.inprocess import clock, new_sequence, numbered
from bench.prompts import PROMPTS
from bench.stats import fmt, percentile
from tests.conftest import build_tiny_model
from tests.engine.helpers import make_sequence, output_of, run_to_end

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=256, initializer_range=0.5)  # 0.5: greedy text varies (as the tests')
GQA = dict(num_key_value_heads=2, head_dim=16)
# name -> (config class, the model's config fields beyond SHAPE + GQA, or in place of them)
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", GQA),
    "qwen2": ("Qwen2Config", GQA),
    "mistral": ("MistralConfig", {**GQA, "sliding_window": None}),
    "mistral-sw16": ("MistralConfig", {**GQA, "sliding_window": 16}),
    "qwen3": ("Qwen3Config", GQA),
    "qwen3_moe": ("Qwen3MoeConfig", {**GQA, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128}),
    "phi3": ("Phi3Config", {"num_key_value_heads": 2}),
    "smollm3": ("SmolLM3Config", {"num_key_value_heads": 2}),
    "granite": ("GraniteConfig", {"num_key_value_heads": 2}),
    "olmo2": ("Olmo2Config", {"num_key_value_heads": 2}),
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 128, "n_positions": 256}),
    "gpt_neox": ("GPTNeoXConfig", {}),
    "gemma2": ("Gemma2Config", GQA),
    "gemma3_text": ("Gemma3TextConfig", GQA),
    "gpt_oss": ("GptOssConfig", {**GQA, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "cohere2": ("Cohere2Config", GQA),
}
# Their own windows (4096; gpt_oss 128) never slide within prompt + generation here: the same with 16.
FAMILIES |= {f"{name}-sw16": (FAMILIES[name][0], {**FAMILIES[name][1], "sliding_window": 16})
             for name in ("gemma2", "gemma3_text", "gpt_oss", "cohere2")}
NO_SHAPE = {"gpt2"}  # its own field names only
JOIN_STEPS = [0, 0, 2, 5]
EXACT_TOKENS = 24
START_CHILD = """
import time
from app.openmp import limit_spinning; limit_spinning()
import asyncio, json, os
import app.engine.engine as engine_module
from app.config import Settings
from app.engine.errors import ModelRefused
timed = {}
def timed_load(config, _load=engine_module.load):
    begun = time.monotonic(); loaded = _load(config); timed["load_s"] = time.monotonic() - begun
    timed["forward"] = loaded.runtime.forward; return loaded
engine_module.load = timed_load
async def main():
    engine = engine_module.Engine(Settings().engine_config())
    try:
        await engine.start()
    except ModelRefused as exc:
        return {"refused": str(exc)}
    ready_at = time.monotonic()  # CLOCK_MONOTONIC: the parent's clock too
    await engine.stop()
    return {"ready_at": ready_at, **timed}
print(json.dumps(asyncio.run(main())), flush=True)
os._exit(0)
"""


def build_family(folder: Path, tokenizer_dir: Path, family: str) -> str | None:
    """The tiny random model of `family` saved to `folder`; None, or why it cannot be built here."""
    import transformers
    from transformers import AutoModelForCausalLM

    class_name, fields = FAMILIES[family]
    config_class = getattr(transformers, class_name, None)
    if config_class is None:
        return f"not in this transformers ({transformers.__version__}: no {class_name})"
    source = json.loads((tokenizer_dir / "config.json").read_text())
    ids = {key: source[key] for key in ("vocab_size", "eos_token_id", "bos_token_id", "pad_token_id")}
    config = config_class(**({} if family in NO_SHAPE else SHAPE), **fields, **ids)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            module = name.rsplit(".", 2)[-2]
            if ("norm" in module or module.startswith("ln_")) and name.endswith(".weight") and parameter.dim() == 1:
                parameter.copy_(1 + 0.3 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (tokenizer_dir / file).exists() and not (folder / file).exists():
            (folder / file).write_bytes((tokenizer_dir / file).read_bytes())
    return None


def time_start(folder: Path) -> dict:
    """One fresh process loading the folder as the server would: seconds to engine ready, load alone."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOKENWIRE_")}
    env |= {"TOKENWIRE_MODEL": str(folder), "TOKENWIRE_DTYPE": "float32", "TOKENWIRE_DEVICE": "cpu",
            "TOKENWIRE_LOG_LEVEL": "warning"}
    launched = time.monotonic()
    done = subprocess.run([sys.executable, "-c", START_CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines or not lines[-1].startswith("{"):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {last}"}
    result = json.loads(lines[-1])
    if "ready_at" in result:
        result["ready_s"] = result.pop("ready_at") - launched
    return result


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def greedy(tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)


def generate(loaded: LoadedModel, scheduler: SchedulerConfig, prompts: list[list[int]], joins: list[int],
             core: EngineCore | None = None, speculation: bool = False) -> list[list[int]]:
    """Greedy token ids of each prompt (EOS ignored), prompt i joining the core just before step joins[i];
    a new core without a prefix cache unless `core` is given."""
    core = core or build_core(loaded, scheduler, None, speculation)
    events: list[list] = [[] for _ in prompts]
    steps: dict[int, list] = {}
    for i, (ids, step) in enumerate(zip(prompts, joins)):
        steps.setdefault(step, []).append(make_sequence(loaded, f"p{i}", ids, greedy(EXACT_TOKENS), events[i]))
    with torch.inference_mode():
        run_to_end(core, steps)
    return [output_of(e)[0] for e in events]


def exactness(loaded: LoadedModel, scheduler: SchedulerConfig, encoder: PromptEncoder) -> dict:
    """Batched = alone, a prefix-cache hit = the first run, drafts on = drafts off (token ids, greedy fp32)."""
    base = encoder.encode_text(numbered("1.1"))
    prompts = [base[:5], base[:11], base, encoder.encode_text(numbered("2.7"))[:17]]
    alone = [generate(loaded, scheduler, [ids], [0])[0] for ids in prompts]
    batched = generate(loaded, scheduler, prompts, JOIN_STEPS)
    drafted = [generate(loaded, scheduler, [ids], [0], speculation=True)[0] for ids in prompts]
    long_ids = encoder.encode_text(PROMPTS["long"])[:90]
    cached_core = build_core(loaded, scheduler, PrefixCacheConfig(), False)
    first = generate(loaded, scheduler, [long_ids], [0], core=cached_core)[0]
    again = generate(loaded, scheduler, [long_ids], [0], core=cached_core)[0]
    stats = cached_core.prefix_cache_stats
    return {"prompt_tokens": [len(p) for p in prompts] + [len(long_ids)], "generated_tokens": EXACT_TOKENS,
            "batched_equals_alone": batched == alone,
            "batched_mismatch": [i for i, (b, a) in enumerate(zip(batched, alone)) if b != a],
            "cache_hit_equals_first": again == first, "cache_hits": stats.hits, "cache_reused_tokens": stats.reused_tokens,
            "drafts_equal_alone": drafted == alone,
            "exact": batched == alone and again == first and drafted == alone and stats.hits > 0}


def decode_steps(core: EngineCore, loaded: LoadedModel, prompt_ids: list[int], tokens: int, streams: int) -> dict:
    """`streams` identical greedy streams (EOS ignored) added at once, stepped to the end: each step's time
    (the first, their prefill, left out) and all tokens over the wall time."""
    events: list[list] = [[] for _ in range(streams)]
    for i in range(streams):
        core.add(new_sequence(loaded, f"speed-{streams}-{i}", prompt_ids, tokens, events[i], ignore_eos=True))
    steps: list[float] = []
    start = clock()
    with torch.inference_mode():
        while core.has_work:
            began = clock()
            core.step()
            steps.append(clock() - began)
    wall = clock() - start
    return {"step_ms_p50": 1000 * percentile(steps[1:], 50), "tokens": sum(e[-1][1] for e in events if e),
            "wall_s": wall}


def speed(loaded: LoadedModel, scheduler: SchedulerConfig, encoder: PromptEncoder, tokens: int,
          rounds: int = 3) -> dict:
    """Decode tokens/s at 1 and 8 streams: streams / the median decode step, over `rounds` alternating runs
    (after one warm-up); a step's median shrugs off another process's burst, a wall time does not."""
    core = build_core(loaded, scheduler, None, False)
    ids = encoder.encode_text(numbered("1.1"))
    decode_steps(core, loaded, ids, min(tokens, 8), 8)  # warm-up
    runs: dict[int, list[dict]] = {1: [], 8: []}
    for _ in range(rounds):
        for streams in runs:
            runs[streams].append(decode_steps(core, loaded, ids, tokens, streams))
    step = {streams: percentile([r["step_ms_p50"] for r in done], 50) for streams, done in runs.items()}
    return {"prompt_tokens": len(ids), "tokens": tokens, "rounds": rounds,
            "step_ms_1": step[1], "step_ms_8": step[8],
            "decode_tok_s_1": 1000 / step[1], "agg_tok_s_8": 8000 / step[8],
            "wall_tok_s_8": percentile([r["tokens"] / r["wall_s"] for r in runs[8]], 50)}


def measure(family: str, folder: Path, tokenizer_dir: Path, tokens: int, start_runs: int) -> dict:
    row: dict = {"family": family, "config_class": FAMILIES[family][0]}
    skipped = build_family(folder, tokenizer_dir, family)
    if skipped:
        return {**row, "starts": False, "reason": skipped}
    saved = json.loads((folder / "config.json").read_text())
    row |= {"model_type": saved.get("model_type"), "sliding_window": saved.get("sliding_window"),
            "layer_types": saved.get("layer_types")}
    starts = [time_start(folder) for _ in range(start_runs)]
    good = [s for s in starts if "ready_s" in s]
    row["start"] = {"ready_s": min(s["ready_s"] for s in good), "load_s": min(s["load_s"] for s in good),
                    "runs": [s["ready_s"] for s in good]} if good else starts[0]
    config = Settings(model=str(folder), dtype="float32", device="cpu").engine_config()
    try:
        loaded = load(config.load)
        encoder = PromptEncoder(loaded.tokenizer, build_core(loaded, config.scheduler, None, False).vocab_size)
    except ModelRefused as exc:
        return {**row, "starts": False, "reason": f"refused: {exc}"}
    except Exception as exc:  # noqa: BLE001 - a family that fails to load is a finding, not a crash
        return {**row, "starts": False, "reason": first_line(exc)}
    row |= {"starts": True, "forward": loaded.runtime.forward, "weights": loaded.runtime.quantization}
    try:
        row["exact"] = exactness(loaded, config.scheduler, encoder)
        row["speed"] = speed(loaded, config.scheduler, encoder, tokens)
    except Exception as exc:  # noqa: BLE001
        row["error"] = first_line(exc)
    return row


def yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "**NO**")


def table(rows: list[dict]) -> str:
    lines = ["| family | starts | forward | batched = alone | cache hit = first | drafts = alone | "
             "decode tok/s 1 stream | agg tok/s 8 streams | ready s | load s |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if not r["starts"]:
            lines.append(f"| {r['family']} | no: {r['reason']} | | | | | | | | |")
            continue
        e, s, st = r.get("exact", {}), r.get("speed", {}), r.get("start", {})
        batched = yes_no(e.get("batched_equals_alone"))
        if e.get("batched_mismatch"):
            batched += f" (prompts {e['batched_mismatch']})"
        hit = yes_no(e.get("cache_hit_equals_first")) + ("" if e.get("cache_hits") else " (no hit)")
        forward = "transformers" if r["forward"].startswith("transformers") else r["forward"]
        lines.append(f"| {r['family']} | yes | {forward} | {batched} | {hit} | "
                     f"{yes_no(e.get('drafts_equal_alone'))} | {fmt(s.get('decode_tok_s_1'))} | "
                     f"{fmt(s.get('agg_tok_s_8'))} | {fmt(st.get('ready_s'), 2)} | {fmt(st.get('load_s'), 2)} |"
                     + (f" error: {r['error']}" if r.get("error") else "")
                     + (f" start-up: {st.get('error') or st.get('refused')}" if "ready_s" not in st else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.families", description=__doc__.split("\n")[0])
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated, of: " + ", ".join(FAMILIES))
    p.add_argument("--tokens", type=int, default=64, help="decode tokens per stream (EOS ignored)")
    p.add_argument("--start-runs", type=int, default=2, help="fresh processes timed per family (min reported)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    names = [name.strip() for name in args.families.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        raise SystemExit(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer_dir = build_tiny_model(Path(scratch) / "tokenizer")
        for name in names:
            rows.append(measure(name, Path(scratch) / name, tokenizer_dir, args.tokens, args.start_runs))
            print(f"{name}: done", file=sys.stderr, flush=True)
    header = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, fp32, "
              f"{args.tokens} tokens per stream; 1-min load average before {load_before:.2f}, after "
              f"{os.getloadavg()[0]:.2f} (above ~0.5: other work shared the cores, the timings with it)")
    print(header + "\n\n" + table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
