"""The only caller of `from_pretrained`: turns a model reference into a model, tokenizer and facts.

A model reference is a local folder, a Hugging Face hub id, or a path to a `.gguf` file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from app.engine.memory import keep_one_copy_of_cpu_kernels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadConfig:
    """What to load and where; built from settings at the edge."""

    model: str
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    trust_remote_code: bool = False


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    eos_token_ids: tuple[int, ...]
    max_position_embeddings: int
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 dot products (AVX512-BF16 or AMX); elsewhere bf16 is slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        dtypes = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                  "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
        if name not in dtypes:
            raise ValueError(f"unknown dtype {name!r}; use auto, bfloat16, float16 or float32")
        return dtypes[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def split_gguf_reference(model: str) -> tuple[str, str | None]:
    """`/x/y/model.gguf` -> (`/x/y`, `model.gguf`); anything else -> (model, None)."""
    if model.endswith(".gguf"):
        path = Path(model)
        return str(path.parent), path.name
    return model, None


def load_tokenizer(model: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    source, gguf_file = split_gguf_reference(model)
    return AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, trust_remote_code=trust_remote_code)


def load_weights(model: str, dtype: torch.dtype, device: torch.device,
                 trust_remote_code: bool = False) -> PreTrainedModel:
    source, gguf_file = split_gguf_reference(model)
    hf_model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=gguf_file, dtype=dtype, trust_remote_code=trust_remote_code
    )
    return hf_model.to(device).eval()


def eos_token_ids(hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """EOS ids from generation_config (e.g. `<|im_end|>`), the model config and the tokenizer."""
    ids: list[int] = []
    for source in (getattr(hf_model, "generation_config", None), hf_model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        for token_id in ([value] if isinstance(value, int) else list(value or [])):
            if token_id not in ids:
                ids.append(int(token_id))
    return tuple(ids)


def load(config: LoadConfig) -> LoadedModel:
    """Load model and tokenizer onto the resolved device and dtype."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    log.info("loading %s on %s as %s", config.model, device, dtype)
    keep_one_copy_of_cpu_kernels()
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    hf_model = load_weights(config.model, dtype, device, config.trust_remote_code)
    max_pos = int(getattr(hf_model.config, "max_position_embeddings", 0) or 2048)
    return LoadedModel(hf_model, tokenizer, eos_token_ids(hf_model, tokenizer), max_pos, device, dtype)

