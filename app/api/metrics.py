"""Prometheus metrics in the app's own registry (so tests can build many apps), served at GET /metrics.

Latencies are observed when a generation request ends, from its RequestRecord; each engine's load
(running, waiting, KV bytes) is read from the ints it publishes, at scrape time, never from a model thread.
Every series has a `model` label.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from app.api.record import RequestRecord
from app.engine.model_pool import ModelPool

UNKNOWN_MODEL = "unknown"  # requests refused before a served model was named (a bounded label set)
ENDPOINTS = ("completions", "chat_completions", "responses", "messages")
OUTCOMES = ("stop", "length", "timeout", "cancelled", "error", "rejected_validation", "rejected_context_length",
            "rejected_overloaded", "rejected_rate_limited", "rejected_auth", "rejected_draining")
# Seconds; CPU serving is slow, so the buckets reach minutes.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, models: ModelPool) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("tokenwire_requests", "Generation requests by endpoint, outcome (finish "
                                "reason, cancelled, error or rejected_<reason>) and model", ["endpoint", "outcome",
                                                                                             "model"], registry=registry)
        self.prompt_tokens = Counter("tokenwire_prompt_tokens", "Prompt tokens of generation requests", ["model"],
                                     registry=registry)
        self.generation_tokens = Counter("tokenwire_generation_tokens", "Tokens generated", ["model"],
                                         registry=registry)
        self.ttft = Histogram("tokenwire_time_to_first_token_seconds", "Arrival to the first token reaching "
                              "the response (a model's load included)", ["model"], buckets=LATENCY_BUCKETS,
                              registry=registry)
        self.itl = Histogram("tokenwire_inter_token_latency_seconds", "Gap between consecutive tokens of a "
                             "response", ["model"], buckets=TOKEN_GAP_BUCKETS, registry=registry)
        self.e2e = Histogram("tokenwire_e2e_request_latency_seconds", "Arrival to the end of the response, "
                             "requests that finished", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue = Histogram("tokenwire_queue_time_seconds", "Arrival in the engine to the first prefill "
                               "step", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.usage = UsageLedger(registry)
        registry.register(ModelCollector(models))
        for endpoint in ENDPOINTS:  # the default model's series exist from the start, at 0
            for outcome in OUTCOMES:
                self.requests.labels(endpoint, outcome, models.catalog.default_name)

    def observe(self, record: RequestRecord) -> None:
        """Count a finished generation request and observe its latencies."""
        model = record.model or UNKNOWN_MODEL
        self.requests.labels(record.endpoint, record.outcome, model).inc()
        self.prompt_tokens.labels(model).inc(record.num_prompt_tokens or 0)
        self.generation_tokens.labels(model).inc(record.num_completion_tokens)
        if record.ttft_s is not None:
            self.ttft.labels(model).observe(record.ttft_s)
        itl = self.itl.labels(model)
        for gap in record.token_gaps:
            itl.observe(gap)
        if record.queue_time_s is not None:
            self.queue.labels(model).observe(record.queue_time_s)
        if record.finish_reason is not None:
            self.e2e.labels(model).observe(record.e2e_s)
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
        labels = (record.tenant or "anonymous", record.model or UNKNOWN_MODEL)
        self.requests.labels(*labels).inc()
        self.prompt_tokens.labels(*labels).inc(record.num_prompt_tokens or 0)
        self.cached_tokens.labels(*labels).inc(record.num_cached_tokens or 0)
        self.completion_tokens.labels(*labels).inc(record.num_completion_tokens)


class ModelCollector:
    """Per model, read at scrape time from what each engine publishes: whether it is loaded and how long
    its last load took; for the loaded ones, running/waiting sequences, KV bytes, the prefix cache's
    bytes, entries and counters, and `tokenwire_runtime_info` (device, dtype and why, threads, CPU features).
    A model's counters start again at 0 when it is loaded again (Prometheus' rate() reads that as a reset)."""

    LOAD = {"requests_running": ("Sequences admitted (prefilling or decoding)", "num_running"),
            "requests_waiting": ("Sequences queued for admission", "num_waiting"),
            "kv_cache_bytes": ("KV-cache bytes in use", "kv_cache_bytes")}
    PREFIX_GAUGES = {"bytes": "KV bytes held by cached prefixes (inside the KV budget)",
                     "entries": "Cached prefixes held"}
    PREFIX_COUNTERS = {"hits": "Prompts that reused a cached prefix",
                       "misses": "Prompts that found no reusable prefix",
                       "evictions": "Cached prefixes evicted for room (least recently used first)",
                       "reused_tokens": "Prompt tokens whose KV came from the prefix cache instead of a prefill"}

    def __init__(self, models: ModelPool) -> None:
        self._models = models

    def describe(self):
        return []  # values come from the engines at scrape time; nothing to check at registration

    def collect(self):
        views = self._models.views()
        loaded = GaugeMetricFamily("tokenwire_model_loaded", "1 for a loaded model, 0 for one in the catalog "
                                   "(TOKENWIRE_MODELS_DIR) that is not", labels=["model"])
        load_seconds = GaugeMetricFamily("tokenwire_model_load_seconds", "How long the model's last load took",
                                         labels=["model"])
        for view in views:
            loaded.add_metric([view.name], 1 if view.engine is not None else 0)
            if view.load_s is not None:
                load_seconds.add_metric([view.name], view.load_s)
        yield loaded
        yield load_seconds
        engines = [(view.name, view.engine) for view in views if view.engine is not None]
        yield from self._load_families(engines)
        yield from self._prefix_cache_families(engines)
        runtime = InfoMetricFamily("tokenwire_runtime", "What a model runs on and why: device, dtype (and the "
                                   "reason it was chosen), torch threads, CPU features", labels=["model"])
        for name, engine in engines:
            if engine.runtime is not None:
                runtime.add_metric([name], {key: ",".join(value) if isinstance(value, tuple) else str(value)
                                            for key, value in engine.runtime.as_dict().items()})
        yield runtime

    def _load_families(self, engines):
        for name, (documentation, attribute) in self.LOAD.items():
            family = GaugeMetricFamily(f"tokenwire_{name}", documentation, labels=["model"])
            for model, engine in engines:
                family.add_metric([model], getattr(engine, attribute))
            yield family

    def _prefix_cache_families(self, engines):
        stats = [(model, engine.prefix_cache_stats) for model, engine in engines]
        for kind, names in ((GaugeMetricFamily, self.PREFIX_GAUGES), (CounterMetricFamily, self.PREFIX_COUNTERS)):
            for name, documentation in names.items():
                family = kind(f"tokenwire_prefix_cache_{name}", documentation, labels=["model"])
                for model, snapshot in stats:
                    family.add_metric([model], getattr(snapshot, name))
                yield family
