"""Prometheus metrics in the app's own registry (so tests can build many apps), served at GET /metrics.

Latencies are observed when a generation request ends, from its RequestRecord; the engine's load
(running, waiting, KV bytes) is read from the ints it publishes, at scrape time, never from the model thread.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from app.api.record import RequestRecord

ENDPOINTS = ("completions", "chat_completions", "responses")
OUTCOMES = ("stop", "length", "timeout", "cancelled", "error", "rejected_validation", "rejected_context_length",
            "rejected_overloaded", "rejected_rate_limited", "rejected_auth", "rejected_draining")
# Seconds; CPU serving is slow, so the buckets reach minutes.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("tokenwire_requests", "Generation requests by endpoint and outcome (finish "
                                "reason, cancelled, error or rejected_<reason>)", ["endpoint", "outcome"],
                                registry=registry)
        self.prompt_tokens = Counter("tokenwire_prompt_tokens", "Prompt tokens of generation requests",
                                     registry=registry)
        self.generation_tokens = Counter("tokenwire_generation_tokens", "Tokens generated", registry=registry)
        self.ttft = Histogram("tokenwire_time_to_first_token_seconds", "Arrival to the first token reaching "
                              "the response", buckets=LATENCY_BUCKETS, registry=registry)
        self.itl = Histogram("tokenwire_inter_token_latency_seconds", "Gap between consecutive tokens of a "
                             "response", buckets=TOKEN_GAP_BUCKETS, registry=registry)
        self.e2e = Histogram("tokenwire_e2e_request_latency_seconds", "Arrival to the end of the response, "
                             "requests that finished", buckets=LATENCY_BUCKETS, registry=registry)
        self.queue = Histogram("tokenwire_queue_time_seconds", "Arrival in the engine to the first prefill "
                               "step", buckets=LATENCY_BUCKETS, registry=registry)
        self.usage = UsageLedger(registry)
        self._engine_gauges(engine)
        for endpoint in ENDPOINTS:  # every series exists from the start, at 0
            for outcome in OUTCOMES:
                self.requests.labels(endpoint, outcome)

    def _engine_gauges(self, engine) -> None:
        gauges = {"tokenwire_requests_running": ("Sequences admitted (prefilling or decoding)", "num_running"),
                  "tokenwire_requests_waiting": ("Sequences queued for admission", "num_waiting"),
                  "tokenwire_kv_cache_bytes": ("KV-cache bytes in use", "kv_cache_bytes")}
        for name, (documentation, attribute) in gauges.items():
            gauge = Gauge(name, documentation, registry=self.registry)
            gauge.set_function(lambda attribute=attribute: getattr(engine, attribute))
        self.registry.register(RuntimeInfoCollector(engine))
        self.registry.register(PrefixCacheCollector(engine))

    def observe(self, record: RequestRecord) -> None:
        """Count a finished generation request and observe its latencies."""
        self.requests.labels(record.endpoint, record.outcome).inc()
        self.prompt_tokens.inc(record.num_prompt_tokens or 0)
        self.generation_tokens.inc(record.num_completion_tokens)
        if record.ttft_s is not None:
            self.ttft.observe(record.ttft_s)
        for gap in record.token_gaps:
            self.itl.observe(gap)
        if record.queue_time_s is not None:
            self.queue.observe(record.queue_time_s)
        if record.finish_reason is not None:
            self.e2e.observe(record.e2e_s)
        self.usage.observe(record)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class UsageLedger:
    """Who used what: requests and prompt, cached and completion tokens per API key name and model.

    `key` holds the key's tenant name (never the key); `anonymous` when the API is open. Every
    generation request with a valid key (or on an open API) is counted, refusals too (with the model
    it named, or `unknown`); requests refused for their key are nobody's.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["key", "model"]
        self.requests = Counter("tokenwire_usage_requests", "Generation requests by API key and model",
                                labels, registry=registry)
        self.prompt_tokens = Counter("tokenwire_usage_prompt_tokens", "Prompt tokens by API key and model "
                                     "(cached ones included)", labels, registry=registry)
        self.cached_tokens = Counter("tokenwire_usage_cached_tokens", "Prompt tokens reused from the prefix "
                                     "cache, by API key and model", labels, registry=registry)
        self.completion_tokens = Counter("tokenwire_usage_completion_tokens", "Completion tokens by API key "
                                         "and model", labels, registry=registry)

    def observe(self, record: RequestRecord) -> None:
        if record.outcome == "rejected_auth":
            return  # no key, or a wrong one: nobody's usage
        labels = (record.tenant or "anonymous", record.model or "unknown")
        self.requests.labels(*labels).inc()
        self.prompt_tokens.labels(*labels).inc(record.num_prompt_tokens or 0)
        self.cached_tokens.labels(*labels).inc(record.num_cached_tokens or 0)
        self.completion_tokens.labels(*labels).inc(record.num_completion_tokens)


class RuntimeInfoCollector:
    """`tokenwire_runtime_info{device, dtype, torch_threads, cpu_features, ...} 1`, once the model is loaded."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def collect(self):
        runtime = self._engine.runtime
        if runtime is None:
            return
        labels = {key: ",".join(value) if isinstance(value, tuple) else str(value)
                  for key, value in runtime.as_dict().items()}
        yield InfoMetricFamily("tokenwire_runtime", "What the server runs on and why: device, dtype (and the "
                               "reason it was chosen), torch threads, CPU features", value=labels)


class PrefixCacheCollector:
    """The prefix cache's bytes and entries now, and its counters since start (from the engine's snapshot)."""

    COUNTERS = {"hits": "Prompts that reused a cached prefix",
                "misses": "Prompts that found no reusable prefix",
                "evictions": "Cached prefixes evicted for room (least recently used first)",
                "reused_tokens": "Prompt tokens whose KV came from the prefix cache instead of a prefill"}

    def __init__(self, engine) -> None:
        self._engine = engine

    def describe(self):
        return []  # values come from the engine at scrape time; nothing to check at registration

    def collect(self):
        stats = self._engine.prefix_cache_stats
        yield GaugeMetricFamily("tokenwire_prefix_cache_bytes", "KV bytes held by cached prefixes (inside "
                                "the KV budget)", value=stats.bytes)
        yield GaugeMetricFamily("tokenwire_prefix_cache_entries", "Cached prefixes held", value=stats.entries)
        for name, documentation in self.COUNTERS.items():
            yield CounterMetricFamily(f"tokenwire_prefix_cache_{name}", documentation, value=getattr(stats, name))
