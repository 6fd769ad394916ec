"""Settings: the only place the environment (TOKENWIRE_* variables and .env) is read.

They are converted to the engine's frozen EngineConfig at the edge and passed inward.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.engine.engine import EngineConfig
from app.engine.loader import LoadConfig
from app.engine.scheduler import SchedulerConfig

DEFAULT_MODEL = "models/SmolLM2-135M-Instruct"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENWIRE_", env_file=".env", extra="ignore",
                                      protected_namespaces=())

    model: str = Field(DEFAULT_MODEL, description="local folder, Hugging Face hub id, or .gguf file")
    served_model_name: str = Field("", description="name clients send as `model`; default: the model's basename")
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
        64, ge=1, description="prompt tokens per step while other streams decode (caps their token gaps)")
    kv_cache_memory_mb: int = Field(4096, ge=16, description="KV-cache budget; admission reserves worst cases")
    trust_remote_code: bool = Field(False, description="allow model folders that ship Python code")

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return PurePath(self.model.rstrip("/")).name.removesuffix(".gguf") or self.model

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            load=LoadConfig(self.model, self.device, self.dtype, self.trust_remote_code),
            served_model_name=self.model_name,
            max_model_len=self.max_model_len,
            scheduler=SchedulerConfig(
                max_running=self.max_running,
                max_waiting=self.max_waiting,
                max_batched_tokens=self.max_batched_tokens,
                max_prefill_tokens_while_decoding=self.max_prefill_tokens_while_decoding,
                kv_budget_bytes=self.kv_cache_memory_mb << 20,
            ),
        )
