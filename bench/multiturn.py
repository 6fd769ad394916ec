"""Multi-turn chat: conversations that grow turn by turn, sent whole every turn as chat front-ends do.

Each of U users holds one conversation: a system prompt of its own, then T turns; each turn appends
a user message (two paragraphs of bench/ppl_text.py and a question, about 250 tokens) and streams an
answer of up to max_tokens, which joins the history. Per turn: TTFT, prompt tokens and
`usage.prompt_tokens_details.cached_tokens`. Run it against servers with the prefix cache on and off
to see what it buys. Then the reuse check: the next turn of one conversation of about 1,500 tokens,
as is (its prefix cached) and with its first message changed by one character (nothing reusable),
alternating, a new question each time, TTFT of each.

    python -m bench.multiturn --url http://127.0.0.1:8000 [--users 1 8] [--turns 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid

import httpx

from bench.client import LoadConfig, RequestResult, check_loopback, make_client, stream_request
from bench.ppl_text import TEXT
from bench.stats import fmt, ms, percentile, ratio

PARAGRAPHS = [p.replace("\n", " ") for p in TEXT.split("\n\n") if p.strip()]
REUSE_CHECK_TOKENS = 1400  # the reuse check's conversation grows until its prompt has this many tokens


def system_prompt(tag: str) -> str:
    return f"[{tag}] You are a careful reading assistant. Answer each question in one or two sentences."


def user_message(conversation: int, turn: int) -> str:
    first = (conversation * 3 + turn * 2) % len(PARAGRAPHS)
    second = (first + 1) % len(PARAGRAPHS)
    return (f"Part {turn + 1} of the notes:\n\n{PARAGRAPHS[first]}\n\n{PARAGRAPHS[second]}\n\n"
            "What is the main point of this part?")


async def chat_turn(client: httpx.AsyncClient, model: str, messages: list[dict], max_tokens: int) -> RequestResult:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    return await stream_request(client, "/v1/chat/completions", body, [])


async def converse(client: httpx.AsyncClient, model: str, index: int, turns: int, max_tokens: int,
                   tag: str) -> list[RequestResult]:
    """One user's conversation, turn after turn; each answer joins the history."""
    messages = [{"role": "system", "content": system_prompt(f"{tag}-{index}")}]
    results = []
    for turn in range(turns):
        messages.append({"role": "user", "content": user_message(index, turn)})
        result = await chat_turn(client, model, messages, max_tokens)
        results.append(result)
        if not result.ok:
            break
        messages.append({"role": "assistant", "content": "".join(result.text)})
    return results


def summarize_turns(users: int, conversations: list[list[RequestResult]]) -> dict:
    """Per turn: TTFT p50, prompt and cached tokens p50, errors; then the hit rate over later turns."""
    rows = []
    for turn in range(max(len(c) for c in conversations)):
        results = [c[turn] for c in conversations if len(c) > turn]
        ok = [r for r in results if r.ok]
        rows.append({"turn": turn + 1, "requests": len(results), "errors": len(results) - len(ok),
                     "ttft_ms_p50": ms(ttft(ok)),
                     "prompt_tokens_p50": percentile([r.prompt_tokens for r in ok if r.prompt_tokens], 50),
                     "cached_tokens_p50": percentile([r.cached_tokens for r in ok if r.cached_tokens is not None], 50)})
    later = [r for c in conversations for r in c[1:] if r.ok]
    reported = [r for r in later if r.cached_tokens is not None]
    everything = [r for c in conversations for r in c if r.ok and r.prompt_tokens]
    return {"users": users, "turns": rows,
            "hit_rate": ratio(sum(1 for r in reported if r.cached_tokens), len(reported)) if reported else None,
            "reused_share": ratio(sum(r.cached_tokens or 0 for r in everything),
                                  sum(r.prompt_tokens for r in everything)) if reported else None}


async def run_users(client: httpx.AsyncClient, model: str, users: int, turns: int, max_tokens: int) -> dict:
    tag = uuid.uuid4().hex[:12]  # fresh conversations: nothing from an earlier run is cached
    conversations = await asyncio.gather(*(converse(client, model, i, turns, max_tokens, tag) for i in range(users)))
    return summarize_turns(users, list(conversations))


async def reuse_check(client: httpx.AsyncClient, model: str, max_tokens: int, repeats: int) -> dict:
    """TTFT of the next turn of a ~1,500-token conversation: cached prefix vs first message changed."""
    tag = uuid.uuid4().hex[:12]
    messages = [{"role": "system", "content": system_prompt(tag)}]
    turn = 0
    while True:
        messages.append({"role": "user", "content": user_message(0, turn)})
        result = await chat_turn(client, model, messages, max_tokens)
        if not result.ok:
            raise RuntimeError(f"building the reuse-check conversation failed: {result.error}")
        messages.append({"role": "assistant", "content": "".join(result.text)})
        turn += 1
        if (result.prompt_tokens or 0) >= REUSE_CHECK_TOKENS:
            break
    hits, misses = [], []
    for attempt in range(repeats):
        # A new question each time, so every hit is a real next turn, not a repeat of the last request.
        ask = {"role": "user", "content": f"Question {attempt + 1}: which part of the notes was most useful?"}
        hits.append(await chat_turn(client, model, [*messages, ask], max_tokens))
        changed = [dict(m) for m in messages] + [ask]
        changed[0]["content"] = f"{attempt % 10}{changed[0]['content'][1:]}"  # one character, new each time
        misses.append(await chat_turn(client, model, changed, max_tokens))
    return {"prompt_tokens": hits[-1].prompt_tokens, "cached_tokens_hit": hits[-1].cached_tokens,
            "cached_tokens_miss": misses[-1].cached_tokens, "ttft_hit_ms": ms(ttft(hits)),
            "ttft_miss_ms": ms(ttft(misses)), "speedup": ratio(ttft(misses), ttft(hits)), "repeats": repeats}


def ttft(results: list[RequestResult]) -> float | None:
    """Median seconds from sending to the first content chunk, successful requests only."""
    return percentile([r.t_first - r.t_start for r in results if r.ok and r.t_first], 50)


async def run_multiturn(url: str, users: list[int], turns: int, max_tokens: int, reuse_repeats: int,
                        api_key: str = "") -> dict:
    cfg = LoadConfig(url=url, api_key=api_key, request_timeout_s=600.0)
    async with make_client(cfg, max(users)) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        runs = [await run_users(client, model, count, turns, max_tokens) for count in users]
        check = await reuse_check(client, model, max_tokens, reuse_repeats) if reuse_repeats else None
        cache = await prefix_cache_metrics(client)
    return {"url": url, "model": model, "max_tokens": max_tokens, "runs": runs, "reuse_check": check,
            "prefix_cache": cache}


async def prefix_cache_metrics(client: httpx.AsyncClient) -> dict[str, float]:
    """tokenwire's tokenwire_prefix_cache_* samples after the run ({} from other servers)."""
    response = await client.get("/metrics")
    if response.status_code != 200:
        return {}
    samples = {}
    for line in response.text.splitlines():
        if line.startswith("tokenwire_prefix_cache_") and not line.split(" ")[0].endswith("_created"):
            name, _, value = line.partition(" ")
            samples[name.removeprefix("tokenwire_prefix_cache_")] = float(value)
    return samples


def markdown(on: dict, off: dict | None = None) -> str:
    """Per-turn TTFT with the cache on (and off), cached tokens, hit rates, and the reuse check."""
    lines = ["| users | turn | prompt tok p50 | cached tok p50 | TTFT p50 on (ms) | TTFT p50 off (ms) | off ÷ on |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for index, run in enumerate(on["runs"]):
        other = off["runs"][index]["turns"] if off else []
        for row in run["turns"]:
            off_row = next((r for r in other if r["turn"] == row["turn"]), None)
            off_ttft = off_row["ttft_ms_p50"] if off_row else None
            lines.append(f"| {run['users']} | {row['turn']} | {fmt(row['prompt_tokens_p50'], 0)} "
                         f"| {fmt(row['cached_tokens_p50'], 0)} | {fmt(row['ttft_ms_p50'])} | {fmt(off_ttft)} "
                         f"| {fmt(ratio(off_ttft, row['ttft_ms_p50']), 2)} |")
    lines.append("")
    for run in on["runs"]:
        lines.append(f"{run['users']} users: hit rate (turns after the first) {fmt(run['hit_rate'], 2)}, "
                     f"prompt tokens reused {fmt(run['reused_share'], 2)}")
    check = on.get("reuse_check")
    if check:
        lines.append(f"reuse check, {check['prompt_tokens']}-token conversation, next turn: TTFT "
                     f"{fmt(check['ttft_hit_ms'])} ms with {check['cached_tokens_hit']} tokens cached vs "
                     f"{fmt(check['ttft_miss_ms'])} ms with the first message changed by one character "
                     f"({fmt(check['speedup'], 1)}x sooner; median of {check['repeats']})")
    cache = on.get("prefix_cache")
    if cache:
        lines.append("prefix cache at the end: " + ", ".join(
            f"{name} {value / 2**20:.0f} MiB" if name == "bytes" else f"{name} {value:.0f}"
            for name, value in cache.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.multiturn", description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--users", type=int, nargs="+", default=[1, 8])
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--reuse-repeats", type=int, default=3, help="0 skips the reuse check")
    p.add_argument("--api-key", default="")
    p.add_argument("--allow-remote", action="store_true")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    check_loopback(args.url, args.allow_remote)
    result = asyncio.run(run_multiturn(args.url, args.users, args.turns, args.max_tokens, args.reuse_repeats,
                                       args.api_key))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
    print(markdown(result))


if __name__ == "__main__":
    main()
