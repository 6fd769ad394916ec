"""The HTTP side of the load generator: one streamed request, timed per chunk."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools
import httpx

clock = time.perf_counter


def numbered(prompt: str, label: str) -> str:
    """The prompt led by its request's label (scenario and number, e.g. "16.3"): no two requests of a
    run share a prefix, so a server's prompt cache (ours, llama.cpp's, vLLM's) cannot answer the load
    scenarios from memory, and every server (and bench.inprocess) is asked the very same texts, so
    answers, and with them what prompt-lookup speculation can draft, are the same on each side."""
    return f"({label}) {prompt}"


@dataclass
class LoadConfig:
    """What to send, to whom, and how much; built from the CLI or by bench.run."""

    url: str = "http://127.0.0.1:8000"
    model: str = ""  # empty: the first id from /v1/models
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    prompts: tuple[str, ...] = ("short", "long")
    max_tokens: int = 64
    requests_per_stream: int = 4
    scenario_timeout_s: float = 180.0
    request_timeout_s: float = 120.0
    warmup: int = 1
    interference: bool = False
    interference_max_tokens: int = 256
    api_key: str = ""
    logit_bias: dict[str, float] = field(default_factory=dict)  # e.g. {"2": -100}: run to max_tokens


@dataclass
class RequestResult:
    """One streamed request; times are perf_counter seconds. Filled in live while streaming."""

    t_start: float
    t_end: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # chunks with non-empty text
    usage_tokens: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, when the server sends it
    text: list[str] = field(default_factory=list)  # the content deltas, in order
    finish_reason: str | None = None
    done: bool = False  # saw data: [DONE]
    error: str | None = None

    @property
    def t_first(self) -> float | None:
        return self.chunk_times[0] if self.chunk_times else None

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else len(self.chunk_times)

    @property
    def ok(self) -> bool:
        return self.error is None and self.t_end is not None

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]


def check_loopback(url: str, allow_remote: bool) -> None:
    """Refuse anything but a loopback host unless --allow-remote was given."""
    host = urlsplit(url).hostname or ""
    if allow_remote or host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"refusing non-loopback URL {url!r}; pass --allow-remote to load another host")


def handle_data(result: RequestResult, data: str, now: float) -> None:
    """Apply one SSE `data:` payload to the result."""
    if data == "[DONE]":
        result.done = True
        return
    body = json.loads(data)
    if body.get("error"):
        result.error = f"error event: {json.dumps(body['error'])[:200]}"
        return
    for choice in body.get("choices") or []:
        text = choice.get("text") or (choice.get("delta") or {}).get("content")
        if text:
            result.chunk_times.append(now)
            result.text.append(text)
        result.finish_reason = choice.get("finish_reason") or result.finish_reason
    usage = body.get("usage")
    if usage:
        result.usage_tokens = usage.get("completion_tokens")
        result.prompt_tokens = usage.get("prompt_tokens")
        result.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")


def payload(cfg: LoadConfig, prompt: str, max_tokens: int) -> dict:
    """The request body: standard OpenAI fields only (logit_bias if asked for), greedy, streamed with usage."""
    body = {"model": cfg.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    if cfg.logit_bias:
        body["logit_bias"] = cfg.logit_bias
    return body


async def stream_one(client: httpx.AsyncClient, cfg: LoadConfig, prompt: str, max_tokens: int,
                     results: list[RequestResult], label: str) -> RequestResult:
    """Send one streaming completion of the prompt numbered by `label`; the result is appended first so
    it is visible while live."""
    return await stream_request(client, "/v1/completions", payload(cfg, numbered(prompt, label), max_tokens),
                                results)


async def stream_request(client: httpx.AsyncClient, path: str, body: dict,
                         results: list[RequestResult]) -> RequestResult:
    """POST one streaming request to `path` and time its chunks (appended to `results` first).

    The stream is read over a plain connection with httptools' C parser, not through httpx: on a
    2-core machine the load generator shares the cores with the server it measures, and httpx's
    pure-Python HTTP/1.1 stack cost about twice the server's own event-loop time per token.
    `client` supplies the base URL, headers and read timeout."""
    result = RequestResult(t_start=clock())
    results.append(result)
    try:
        await _stream_sse(client, path, json.dumps(body).encode(), result)
        if result.error is None and not (result.done or result.finish_reason):
            result.error = "stream ended without finish_reason or [DONE]"
    except (OSError, ValueError, TimeoutError, httptools.HttpParserError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    result.t_end = clock()
    return result


class _SSEReader:
    """httptools callbacks: the status, then the body's `data:` lines applied to the result as they come."""

    def __init__(self, result: RequestResult) -> None:
        self.result = result
        self.parser = httptools.HttpResponseParser(self)
        self.pending = b""  # an incomplete line
        self.error_body = b""
        self.complete = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, chunk: bytes) -> None:
        if self.status != 200:
            self.error_body += chunk
            return
        now = clock()
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                handle_data(self.result, line[5:].strip().decode(), now)

    def on_message_complete(self) -> None:
        self.complete = True
        if self.status != 200:
            self.result.error = f"HTTP {self.status}: {self.error_body[:200].decode(errors='replace')}"


async def _stream_sse(client: httpx.AsyncClient, path: str, payload: bytes, result: RequestResult) -> None:
    """One request on its own connection (Connection: close), read until the response is complete."""
    url = client.base_url
    port = url.port or (443 if url.scheme == "https" else 80)
    head = [f"POST {url.raw_path.decode().rstrip('/')}{path} HTTP/1.1", f"Host: {url.netloc.decode()}",
            "Content-Type: application/json", "Accept: text/event-stream", f"Content-Length: {len(payload)}",
            "Connection: close", *(f"{k}: {v}" for k, v in client.headers.items() if k.lower() == "authorization")]
    read_timeout = client.timeout.read or None
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(client.timeout.connect) as deadline:
        reader, writer = await asyncio.open_connection(url.host, port, ssl=url.scheme == "https" or None)
        try:
            writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + payload)
            sse = _SSEReader(result)
            while not sse.complete:
                deadline.reschedule(None if read_timeout is None else loop.time() + read_timeout)
                data = await reader.read(65536)
                if not data:  # a body without length or chunks ends with the connection
                    if result.done or result.finish_reason:
                        break
                    raise ConnectionError("the server closed the connection mid-response")
                sse.parser.feed_data(data)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def make_client(cfg: LoadConfig, connections: int) -> httpx.AsyncClient:
    """A pooled client for cfg.url with room for `connections` concurrent streams."""
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    limits = httpx.Limits(max_connections=connections + 4, max_keepalive_connections=connections + 4)
    timeout = httpx.Timeout(cfg.request_timeout_s, connect=10.0)
    return httpx.AsyncClient(base_url=cfg.url.rstrip("/"), headers=headers, limits=limits, timeout=timeout)
