"""Settings: the only place the environment (TOKENWIRE_* variables and .env) is read.

They are converted to the engine's frozen EngineConfig at the edge and passed inward.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.durations import duration_seconds
from app.engine.engine import EngineConfig
from app.engine.model_pool import PoolConfig
from app.engine.models.loader import LoadConfig
from app.engine.kv.prefix_cache import PrefixCacheConfig
from app.engine.scheduling.scheduler import SchedulerConfig

DEFAULT_MODEL = "models/SmolLM2-135M-Instruct"
MEMORY_SHARE = 0.8  # of the machine's memory, for the loaded models when TOKENWIRE_MODELS_MEMORY_MB is 0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENWIRE_", env_file=".env", extra="ignore",
                                      protected_namespaces=())

    model: str = Field(DEFAULT_MODEL, description="local folder, Hugging Face hub id, or .gguf file")
    served_model_name: str = Field("", description="name clients send as `model`; default: the model's basename")
    models_dir: str = Field("", description="a folder of more models, loaded on first use: each subfolder with a "
                            "config.json and each .gguf file, named by its folder or file name (README \"Many models\")")
    max_loaded_models: int = Field(3, ge=0, description="models loaded at once, the default one included; the "
                                   "least recently used idle one is unloaded to make room (0: no bound)")
    models_memory_mb: int = Field(0, ge=0, description="memory the loaded models may take, each counted as its "
                                  "weight files plus TOKENWIRE_KV_CACHE_MEMORY_MB; 0: 80% of the machine's memory")
    model_keep_alive: str = Field("5m", description="idle time before a model loaded on demand is unloaded: "
                                  "seconds or a duration (\"5m\", \"1h\"); negative: never. The default model "
                                  "stays loaded unless a request's keep_alive says otherwise")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto picks CUDA when present")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bf16 where the CPU/GPU supports it, else fp32 (fp16 on old GPUs)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_model_len: int = Field(0, ge=0, description="context window in tokens; 0 = the model's own")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    max_running: int = Field(64, ge=1, description="sequences decoded together in one batch")
    max_waiting: int = Field(256, ge=0, description="requests queued beyond the running ones; more get 429")
    max_batched_tokens: int = Field(512, ge=16, description="tokens per step: decode rows + prompt chunks")
    max_prefill_tokens_while_decoding: int = Field(
        48, ge=1, description="chunk size for long prompts while other streams decode (caps their token gaps)")
    kv_cache_memory_mb: int = Field(4096, ge=16, description="KV-cache budget; admission reserves worst cases")
    prefix_cache: bool = Field(True, description="reuse the KV of prompt prefixes seen recently (conversations, "
                               "shared system prompts); false: every prompt is prefilled in full")
    prefix_cache_share: float = Field(0.5, gt=0, le=1, description="largest share of the KV budget cached "
                                      "prefixes may hold; they are evicted first when requests need memory")
    prefix_cache_min_tokens: int = Field(64, ge=1, description="shortest shared prefix worth reusing (a hit "
                                         "prefills alone instead of in a group of short prompts)")
    speculation: bool = Field(True, description="prompt-lookup drafts for a lone stream, verified in one "
                              "forward (native kernels; the same tokens either way); false: one token per step")
    trust_remote_code: bool = Field(False, description="allow model folders that ship Python code")
    fused_forward: bool = Field(True, description="tokenwire's fused forward for the registered families' "
                                "models (Llama, Qwen2/3, Mistral, Phi-3, Gemma 2/3; false: transformers' own "
                                "forward for every model)")
    native_kernels: bool = Field(True, description="tokenwire's native CPU kernels for the fused models: the "
                                 "same answer alone or batched, and faster (false: torch ops)")
    native_isa: Literal["auto", "avx512", "avx2", "generic"] = Field(
        "auto", description="which build of the native kernels (auto: the best this CPU runs; all give "
        "identical numbers)")
    quantization: Literal["auto", "none", "int8", "int4"] = Field(
        "auto", description="how the native kernels hold weights; auto: 4/8-bit where an fp32 checkpoint "
        "lies exactly on GGUF's Q4_1/Q8_0 grids (lossless), else dense in dtype; int8/int4: those grids, lossy")
    onednn_max_cpu_isa: str = Field(
        "", validation_alias=AliasChoices("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "TOKENWIRE_ONEDNN_MAX_CPU_ISA"),
        description="oneDNN's own cap on the instructions it uses (its standard variables, which oneDNN reads too, "
        "win): capped below AVX512_CORE_BF16, auto dtype on torch's forward treats the CPU as one without native bf16")

    # HTTP limits and access control (see README "Limits"); app.main and app.lifecycle apply them.
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body in bytes; larger gets 413")
    max_header_bytes: int = Field(16384, ge=1024, description="request line + headers in bytes; larger is refused")
    request_head_timeout_s: float = Field(
        10.0, gt=0, description="time to receive the request line and headers; slower gets 408, connection closed")
    request_read_timeout_s: float = Field(10.0, gt=0, description="time to receive a whole body; slower gets 408")
    keep_alive_timeout_s: int = Field(5, ge=1, description="idle keep-alive connections are closed after this")
    request_timeout_s: float = Field(600.0, ge=0, description="generation deadline per request; 0 = none")
    api_keys: SecretStr = Field(SecretStr(""), description="comma-separated bearer keys, each optionally "
                                "followed by name=, weight=, priority=, requests=N/min, tokens=N/hour "
                                "(README \"Tenants\"); empty = no auth")
    api_key_file: str = Field("", description="a file with one API key entry per line (# comments allowed)")
    fair_share: bool = Field(True, description="share the engine between API keys by weight and priority "
                             "(false: first in, first out, whoever sent it)")
    cors_origins: str = Field("", description="comma-separated allowed browser origins; empty = no CORS")
    playground: bool = Field(True, description="serve the chat playground page at / (false: / is a 404)")

    # The store: stored responses and resumable streams (see README "Stored responses and resumable streams").
    store_url: str = Field("sqlite:///data/tokenwire.sqlite3", description="where responses and stream events "
                           "are kept: sqlite:///PATH (a file; relative to the working directory, or "
                           "sqlite:////ABSOLUTE) or redis://HOST:PORT/DB, which replicas share")
    store_max_age: str = Field("30d", description="a stored response is forgotten this long after its last change "
                               "(seconds or a duration: 90s, 10m, 12h, 30d)")
    store_max_mb: int = Field(1024, ge=1, description="stored responses and stream events together; beyond it the "
                              "least recently written go first")
    stream_retention: str = Field("10m", description="a stream stays resumable this long after its last event "
                                  "(at least 60s)")
    stream_unattended: str = Field("15s", description="a streamed generation no client reads (a dropped "
                                   "connection) goes on this long, so the client can resume it; then it is "
                                   "cancelled. 0 = cancel when the connection drops")

    # Lifecycle and observability (see README "Lifecycle" and "Observability").
    drain_timeout_s: float = Field(25.0, ge=0, description="after SIGTERM: time in-flight requests get to finish")
    sse_keepalive_s: float = Field(15.0, gt=0, description="seconds between `: ping` comments on a stream")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line")
    log_prompts: bool = Field(False, description="put prompts in the request log (they may hold personal data)")
    otel_exporter_otlp_endpoint: str = Field(
        "", validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "TOKENWIRE_OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP/HTTP collector base URL (e.g. http://127.0.0.1:4318): a trace span per generation "
        "request goes to its /v1/traces; empty = no tracing (the OpenTelemetry SDK is not even loaded)")

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return PurePath(self.model.rstrip("/")).name.removesuffix(".gguf") or self.model

    @field_validator("model_keep_alive")
    @classmethod
    def _a_duration(cls, value: str) -> str:
        duration_seconds(value)  # raises a ValueError naming the forms it takes
        return value

    @field_validator("store_max_age", "stream_retention", "stream_unattended")
    @classmethod
    def _a_positive_duration(cls, value: str, info) -> str:
        seconds = long_duration_seconds(value)
        if seconds < 0:
            raise ValueError("must not be negative")
        if info.field_name == "stream_retention" and seconds < 60:
            raise ValueError("must be at least 60s: a dropped client needs time to come back")
        return value

    def store_seconds(self) -> tuple[float, float, float]:
        """(store_max_age, stream_retention, stream_unattended) in seconds."""
        return (long_duration_seconds(self.store_max_age), long_duration_seconds(self.stream_retention),
                long_duration_seconds(self.stream_unattended))

    def pool_config(self) -> PoolConfig:
        budget = self.models_memory_mb << 20 or int(MEMORY_SHARE * machine_memory_bytes())
        return PoolConfig(self.max_loaded_models, budget, duration_seconds(self.model_keep_alive))

    def api_key_entries(self) -> tuple[str, ...]:
        """Key entries (`KEY [field=value ...]`) from TOKENWIRE_API_KEYS and TOKENWIRE_API_KEY_FILE;
        none means the API is open."""
        keys = self.api_keys.get_secret_value().split(",")
        if self.api_key_file:
            lines = Path(self.api_key_file).read_text(encoding="utf-8").splitlines()
            keys += [line for line in lines if not line.lstrip().startswith("#")]
        return tuple(dict.fromkeys(k.strip() for k in keys if k.strip()))

    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            load=LoadConfig(self.model, self.device, self.dtype, self.trust_remote_code, self.fused_forward,
                            self.quantization, native_kernels=self.native_kernels, native_isa=self.native_isa,
                            onednn_max_cpu_isa=self.onednn_max_cpu_isa, max_model_len=self.max_model_len),
            served_model_name=self.model_name,
            max_model_len=self.max_model_len,
            request_timeout_s=self.request_timeout_s,
            scheduler=SchedulerConfig(
                max_running=self.max_running,
                max_waiting=self.max_waiting,
                max_batched_tokens=self.max_batched_tokens,
                max_prefill_tokens_while_decoding=self.max_prefill_tokens_while_decoding,
                kv_budget_bytes=self.kv_cache_memory_mb << 20,
                fair_share=self.fair_share,
            ),
            prefix_cache=PrefixCacheConfig(
                max_bytes=int(self.prefix_cache_share * (self.kv_cache_memory_mb << 20)),
                min_tokens=self.prefix_cache_min_tokens,
            ) if self.prefix_cache else None,
            speculation=self.speculation,
        )


def long_duration_seconds(value: str) -> float:
    """A duration that may also be written in days ("30d"), beside the forms keep_alive takes."""
    text = value.strip()
    if text.endswith("d") and text[:-1].replace(".", "", 1).isdigit():
        return float(text[:-1]) * 86400
    return duration_seconds(text)


def machine_memory_bytes() -> int:
    """Physical memory, or the container's cgroup limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(limit).read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            total = min(total, int(value))
    return total
