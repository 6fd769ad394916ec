"""The only caller of `from_pretrained`: turns a model reference into a model, tokenizer and facts.

A model reference is a local folder, a Hugging Face hub id, or a path to a `.gguf` file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from app.engine.fused_llama import FusedLlama, build_fused
from app.engine.hardware import CpuFeatures, RuntimeInfo, detect_cpu_features
from app.engine.memory import keep_one_copy_of_cpu_kernels
from app.engine.quantization import apply_quantization

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadConfig:
    """What to load and where; built from settings at the edge."""

    model: str
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    trust_remote_code: bool = False
    fused_forward: bool = True  # FusedLlama for Llama-family models; False: transformers' forward always
    quantization: str = "auto"  # auto | none | int8 | int4: low-bit weight copies for steps with few rows
    copy_max_rows: int = 0  # largest step the copies serve; 0 = measured at load


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    eos_token_ids: tuple[int, ...]
    max_position_embeddings: int
    device: torch.device
    dtype: torch.dtype
    runtime: RuntimeInfo
    fused: FusedLlama | None = None  # the fast forward, when the model is one it knows


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
           "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}


def resolve_dtype(name: str, device: torch.device, cpu: CpuFeatures | None = None) -> tuple[torch.dtype, str]:
    """The dtype to load in, and why (for the start-up log and /health)."""
    if name != "auto":
        if name not in _DTYPES:
            raise ValueError(f"unknown dtype {name!r}; use auto, bfloat16, float16 or float32")
        return _DTYPES[name], "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: the GPU supports bf16"
        return torch.float16, "auto: the GPU has no bf16"
    cpu = cpu or detect_cpu_features()
    if cpu.native_bf16:
        return torch.bfloat16, "auto: the CPU has native bf16 (AVX512-BF16/AMX)"
    if cpu.isa_cap and ("avx512_bf16" in cpu.flags or "amx_bf16" in cpu.flags):
        return torch.float32, f"auto: ONEDNN_MAX_CPU_ISA={cpu.isa_cap} rules out native bf16"
    return torch.float32, "auto: no native bf16 on this CPU (bf16 would be emulated, slow for batches)"


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
    cpu = detect_cpu_features()
    dtype, reason = resolve_dtype(config.dtype, device, cpu)
    runtime = RuntimeInfo(str(device), str(dtype).removeprefix("torch."), reason, torch.get_num_threads(),
                          cpu.names, cpu.isa_cap, torch.__version__)
    log.info("loading %s on %s as %s", config.model, device, runtime.dtype)
    keep_one_copy_of_cpu_kernels()
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    hf_model = load_weights(config.model, dtype, device, config.trust_remote_code)
    fused, forward = build_fused(hf_model, config.fused_forward)
    quantization = apply_quantization(fused, config.quantization, config.copy_max_rows, dtype, device)
    runtime = replace(runtime, forward=forward, quantization=quantization)
    log.info("loaded %s: %s", config.model, runtime.summary())
    max_pos = int(getattr(hf_model.config, "max_position_embeddings", 0) or 2048)
    return LoadedModel(hf_model, tokenizer, eos_token_ids(hf_model, tokenizer), max_pos, device, dtype, runtime,
                       fused)
