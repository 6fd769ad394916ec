"""The only caller of `from_pretrained`: turns a model reference into a model, tokenizer and facts.

A model reference is a local folder, a Hugging Face hub id, or a path to a `.gguf` file. A local
safetensors folder of a registered family (app/engine/models/families/: Llama, the default model's kind,
Qwen2, Mistral, Qwen3, Phi-3; Gemma 2/3 into FusedGemma) is read straight into the fused forward
(app/engine/models/llama_checkpoint.py) and moved onto the native kernels, or mapped as packed by an earlier
start (native/packed_cache.py),
and a folder's tokenizer
is FastTokenizer (app/engine/text/tokenizer.py) where that is exactly what AutoTokenizer builds (the
generic fast tokenizer of Llama, Mistral, Phi-3, Qwen3 and Gemma folders; Qwen2Tokenizer and
GemmaTokenizer, whose pipelines it puts on tokenizer.json's vocabulary): transformers'
model and config classes import its modeling code (and torch.distributed), and transformers itself
takes half a second to import. Everything else goes through `from_pretrained` / AutoTokenizer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from app.engine.models.attention_layers import full_attention_overrides
from app.engine.models.fused_llama import FusedLlama, LlamaDims, build_fused
from app.engine.models.gguf_checkpoint import GgufCheckpoint, fused_from_gguf, open_gguf
from app.engine.models.hardware import CpuFeatures, RuntimeInfo, detect_cpu_features
from app.engine.models.llama_checkpoint import LlamaCheckpoint, as_saved, fused_from_checkpoint, open_checkpoint
from app.engine.models.memory import keep_one_copy_of_cpu_kernels
from app.engine.native import packed_cache
from app.engine.native.backend import attach, describe_weights, open_library
from app.engine.native.library import NativeLibrary
from app.engine.native.model import NativeLlama, unsupported_reason
from app.engine.text import tokenizer as fast_tokenizer
from app.engine.text.tokenizer import FastTokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadConfig:
    """What to load and where; built from settings at the edge."""

    model: str
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    trust_remote_code: bool = False
    fused_forward: bool = True  # FusedLlama for Llama-family models; False: transformers' forward always
    # How the native kernels hold weights: auto = exact Q4/Q8 where an fp32 checkpoint lies on those
    # grids, else dense in dtype; none = dense; int8 | int4 = those grids, lossy.
    quantization: str = "auto"
    read_checkpoints: bool = True  # False: every model through transformers' from_pretrained
    native_kernels: bool = True  # the native CPU kernels for Llama-family and Gemma 2/3 models (False: torch ops)
    native_isa: str = "auto"  # auto | avx512 | avx2 | generic: which build of them (a CPU may run a narrower one)
    onednn_max_cpu_isa: str = ""  # oneDNN's cap on its instructions (ONEDNN_MAX_CPU_ISA): may rule out native bf16
    max_model_len: int = 0  # the context served (0: the model's own); a sliding window is measured against it


@dataclass
class LoadedModel:
    model: PreTrainedModel | None  # None when the checkpoint was read straight into `fused`
    tokenizer: PreTrainedTokenizerBase
    eos_token_ids: tuple[int, ...]
    max_position_embeddings: int
    device: torch.device
    dtype: torch.dtype
    runtime: RuntimeInfo
    fused: FusedLlama | None = None  # the torch fast forward, when the model is one it knows
    native: NativeLlama | None = None  # the native kernels' forward (then `fused` and `model` are None)

    @property
    def dims(self) -> LlamaDims:
        """Layer count, heads and vocabulary size, whichever way the model was loaded."""
        if self.native is not None or self.fused is not None:
            return (self.native or self.fused).dims
        config = self.model.config.get_text_config()
        return LlamaDims.of(lambda key, default: getattr(config, key, default))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
           "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}


def resolve_dtype(name: str, device: torch.device, cpu: CpuFeatures | None = None,
                  native: bool = False) -> tuple[torch.dtype, str]:
    """The dtype to load in, and why (for the start-up log and /health)."""
    if name != "auto":
        if name not in _DTYPES:
            raise ValueError(f"unknown dtype {name!r}; use auto, bfloat16, float16 or float32")
        return _DTYPES[name], "asked for"
    if native:
        # The same arithmetic on every CPU (no emulated bf16 math): bf16 stores dense weights and the KV
        # cache, and 4/8-bit matrices meet 8-bit activations; float32 keeps everything in fp32.
        return torch.bfloat16, "auto: native kernels (bf16 storage, 8-bit activations for 4/8-bit weights)"
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


# GGUF architectures whose tokenizer is built here, with the class AutoTokenizer builds for it: the generic
# one (Qwen3's is Qwen2Tokenizer: not here), GemmaTokenizer for Gemma 2/3 (transformers' gemma builder:
# multi-space pieces respelled, merges in the file's order); and the vocabularies built here: byte-level
# BPE and sentencepiece (BPE with byte fallback, "▁" spaces).
_GGUF_TOKENIZER_CLASSES = {"llama": "PreTrainedTokenizerFast", "phi3": "PreTrainedTokenizerFast",
                           "gemma2": "GemmaTokenizer", "gemma3": "GemmaTokenizer"}
_GGUF_DIRECT_TOKENIZERS = {"gpt2", "llama"}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _plain_fast_tokenizer_folder(source: str) -> bool:
    """True for a local folder whose tokenizer FastTokenizer may reproduce (no transformers import
    needed): the class AutoTokenizer builds there is one it follows (fast_tokenizer.auto_class, by the
    folder's model type and declared class). FastTokenizer.refusal has the last word."""
    return fast_tokenizer.applies_to(Path(source)) is None


def load_tokenizer(model: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase | FastTokenizer:
    source, gguf_file = split_gguf_reference(model)
    if gguf_file is None and _plain_fast_tokenizer_folder(source):
        # AutoTokenizer would import transformers (half a second) and build the config class first.
        fast = FastTokenizer.from_folder(source)
        if fast.refusal() is None:
            return fast
    if gguf_file is not None and (direct := _gguf_tokenizer(model)) is not None:
        return direct
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, trust_remote_code=trust_remote_code)


def _gguf_tokenizer(path: str) -> PreTrainedTokenizerBase | None:
    """A GGUF file's tokenizer as AutoTokenizer builds it, in the class it picks (transformers' generic
    class for a llama- or phi3-architecture file with a byte-level BPE vocabulary, the default model's
    kind, or a sentencepiece one, Llama-2's kind; GemmaTokenizer for a gemma2/gemma3 file's
    sentencepiece vocabulary), with transformers' own GGUF builders (their merges, byte fallback,
    Metaspace or Phi-3's normalizer, Gemma's respelled spaces, control tokens) but without the config
    AutoTokenizer reads first: that is a second pass over the file's metadata (about 4 s for a 49k-token
    vocabulary, with every string an array view). None: AutoTokenizer's turn."""
    import transformers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    architecture, vocabulary, tokenizer_config = get_gguf_tokenizer(path)
    kind = vocabulary.get("tokenizer_type")
    if architecture not in _GGUF_TOKENIZER_CLASSES or kind not in _GGUF_DIRECT_TOKENIZERS \
            or (architecture.startswith("gemma") and kind != "llama"):  # Gemma: sentencepiece only, tested
        return None
    backend, extra = convert_gguf_tokenizer(architecture, vocabulary)
    tokenizer_class = getattr(transformers, _GGUF_TOKENIZER_CLASSES[architecture])
    return tokenizer_class(tokenizer_object=backend, **tokenizer_config, **extra)


def attention_overrides(config: LoadConfig) -> dict[str, object]:
    """What makes every layer full attention, from a local folder's config.json before anything else
    is read; raises ModelRefused where batched decoding cannot serve the model. A hub id or GGUF file
    has no config to read this cheaply: kv_store.check_plain_cache refuses those after the load."""
    path = Path(config.model) / "config.json"
    if not path.is_file():
        return {}
    stored = json.loads(path.read_text())
    derived = as_saved(stored)  # Gemma's older configs: the layer types their config class derives
    return full_attention_overrides(derived if isinstance(derived, dict) else stored, config.max_model_len, str(path))


def load_weights(model: str, dtype: torch.dtype, device: torch.device,
                 trust_remote_code: bool = False, overrides: dict[str, object] | None = None) -> PreTrainedModel:
    """`overrides`: config fields set over the stored ones (attention_overrides)."""
    from transformers import AutoModelForCausalLM
    source, gguf_file = split_gguf_reference(model)
    hf_model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=gguf_file, dtype=dtype, trust_remote_code=trust_remote_code, **(overrides or {})
    )
    return hf_model.to(device).eval()


def _merged_ids(values: list[object]) -> tuple[int, ...]:
    ids: list[int] = []
    for value in values:
        for token_id in ([value] if isinstance(value, int) else list(value or [])):
            if token_id not in ids:
                ids.append(int(token_id))
    return tuple(ids)


def eos_token_ids(hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """EOS ids from generation_config (e.g. `<|im_end|>`), the model config and the tokenizer."""
    sources = (getattr(hf_model, "generation_config", None), hf_model.config, tokenizer)
    return _merged_ids([getattr(source, "eos_token_id", None) if source is not None else None for source in sources])


def _checkpoint_eos_ids(folder: Path, config: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The same ids, in the same order, from the folder's generation_config.json and config.json."""
    generation = _read_json(folder / "generation_config.json")
    return _merged_ids([generation.get("eos_token_id"), config.get("eos_token_id"), tokenizer.eos_token_id])


def load(config: LoadConfig) -> LoadedModel:
    """Load model and tokenizer onto the resolved device and dtype, on the native kernels where they apply."""
    overrides = attention_overrides(config)  # first: a refused model reads no weights
    device = resolve_device(config.device)
    cpu = detect_cpu_features(config.onednn_max_cpu_isa)
    library = open_library(config.native_kernels and config.fused_forward, config.native_isa, cpu, device)
    native = isinstance(library, NativeLibrary)
    checkpoint = _checkpoint(config, overrides)
    gguf = _gguf(config) if checkpoint is None else None
    dtype, reason = resolve_dtype(config.dtype, device, cpu, native and _native_checkpoint(checkpoint or gguf))
    runtime = RuntimeInfo(str(device), str(dtype).removeprefix("torch."), reason, torch.get_num_threads(),
                          cpu.names, cpu.isa_cap, torch.__version__)
    log.info("loading %s on %s as %s", config.model, device, runtime.dtype)
    keep_one_copy_of_cpu_kernels()
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    loaded = _read_packed(checkpoint, config, tokenizer, dtype, runtime, library) if native else None
    if loaded is None and checkpoint is not None:
        loaded = _read_checkpoint(checkpoint, tokenizer, device, dtype, runtime, native)
    if loaded is None and gguf is not None:
        loaded = _read_gguf(gguf, config, tokenizer, device, dtype, runtime, library)
    if loaded is None:
        hf_model = load_weights(config.model, dtype, device, config.trust_remote_code, overrides)
        fused, forward = build_fused(hf_model, config.fused_forward)
        max_pos = int(getattr(hf_model.config, "max_position_embeddings", 0) or 2048)
        loaded = LoadedModel(hf_model, tokenizer, eos_token_ids(hf_model, tokenizer), max_pos, device, dtype,
                             replace(runtime, forward=forward), fused)
    if loaded.native is None and _go_native(loaded, library, config.quantization) and checkpoint is not None:
        if packed_cache.worth_saving(loaded.native):
            packed_cache.save(loaded.native, packed_cache.cache_file(checkpoint, dtype, config.quantization))
    log.info("loaded %s: %s", config.model, loaded.runtime.summary())
    return loaded


def _go_native(loaded: LoadedModel, library: NativeLibrary | str, quantization: str) -> bool:
    """Move a fused model onto the native kernels (the torch weights are dropped), or note why not."""
    if loaded.fused is None:
        return False
    result = library if isinstance(library, str) else attach(
        loaded.fused, library, loaded.fused.dims, loaded.dtype, loaded.max_position_embeddings, quantization)
    if isinstance(result, str):
        loaded.runtime = replace(loaded.runtime, forward=f"fused ({result})", quantization="none (torch forward)")
        return False
    loaded.native, loaded.fused, loaded.model = result, None, None
    loaded.runtime = replace(loaded.runtime, forward=f"native ({library.isa} build)",
                             quantization=describe_weights(result, quantization))
    return True


def _read_dtype(checkpoint: LlamaCheckpoint, dtype: torch.dtype, native: bool) -> torch.dtype:
    """fp32 for an fp32 checkpoint bound for the native kernels (they find exact low-bit grids in
    fp32 weights, and pack the rest in `dtype`), else `dtype`."""
    dims = LlamaDims.of(checkpoint.get)
    if native and _native_checkpoint(checkpoint) and checkpoint.stored_float32 \
            and unsupported_reason(dims, dtype, torch.device("cpu")) is None:
        return torch.float32
    return dtype


def _checkpoint(config: LoadConfig, overrides: dict[str, object] | None = None) -> LlamaCheckpoint | None:
    """The checkpoint to read directly, or None where transformers must load the model. `overrides` as
    from_pretrained would get them (a window that never slides, read as full attention)."""
    if not (config.read_checkpoints and config.fused_forward) or config.trust_remote_code:
        return None
    checkpoint = open_checkpoint(config.model, overrides)
    if isinstance(checkpoint, str):
        log.info("loading through transformers: %s", checkpoint)
        return None
    return checkpoint


def _gguf(config: LoadConfig) -> GgufCheckpoint | None:
    """The GGUF file to read directly (gguf_checkpoint.py), or None where transformers must load it."""
    if not (config.read_checkpoints and config.fused_forward) or config.trust_remote_code:
        return None
    if not config.model.endswith(".gguf"):
        return None
    gguf = open_gguf(config.model)
    if isinstance(gguf, str):
        log.warning("loading %s through transformers: %s", config.model, gguf)
        return None
    return gguf


def _native_checkpoint(checkpoint: LlamaCheckpoint | GgufCheckpoint | None) -> bool:
    """Whether the kernels will run this checkpoint (then auto is bf16 on any CPU). A model that only
    transformers reads gets the CPU's own auto dtype, as it may end on torch's forward."""
    if isinstance(checkpoint, GgufCheckpoint) and checkpoint.layout.gemma:
        # Its blocks are not packed straight (native/gguf_weights.py packs Llama-shaped files): it is
        # dequantized into FusedGemma, which then moves onto the kernels as any fused model does.
        return False
    return checkpoint is not None and not unsupported_reason(LlamaDims.of(checkpoint.get), torch.bfloat16,
                                                             torch.device("cpu"))


def _loaded_from(checkpoint: LlamaCheckpoint, tokenizer: PreTrainedTokenizerBase, device: torch.device,
                 dtype: torch.dtype, runtime: RuntimeInfo, **forward) -> LoadedModel:
    max_pos = int(checkpoint.get("max_position_embeddings", 0) or 2048)
    eos = _checkpoint_eos_ids(checkpoint.folder, checkpoint.config, tokenizer)
    return LoadedModel(None, tokenizer, eos, max_pos, device, dtype, runtime, **forward)


def _read_packed(checkpoint: LlamaCheckpoint | None, config: LoadConfig, tokenizer: PreTrainedTokenizerBase,
                 dtype: torch.dtype, runtime: RuntimeInfo, library: NativeLibrary) -> LoadedModel | None:
    """The native model from the weights a previous start packed (app/engine/native/packed_cache.py)."""
    if not _native_checkpoint(checkpoint) or unsupported_reason(LlamaDims.of(checkpoint.get), dtype, torch.device("cpu")):
        return None
    path = packed_cache.cache_file(checkpoint, dtype, config.quantization)
    native = packed_cache.load(path, library, LlamaDims.of(checkpoint.get), dtype, checkpoint)
    if native is None:
        return None
    log.info("mapped the weights packed by an earlier start: %s", path)
    runtime = replace(runtime, forward=f"native ({library.isa} build)",
                      quantization=describe_weights(native, config.quantization))
    return _loaded_from(checkpoint, tokenizer, torch.device("cpu"), dtype, runtime, native=native)


def _read_checkpoint(checkpoint: LlamaCheckpoint, tokenizer: PreTrainedTokenizerBase, device: torch.device,
                     dtype: torch.dtype, runtime: RuntimeInfo, native: bool = False) -> LoadedModel | None:
    """The model read straight from its checkpoint, or None where transformers must load it."""
    try:
        fused = fused_from_checkpoint(checkpoint, _read_dtype(checkpoint, dtype, native), device)
    except Exception:  # noqa: BLE001 - a file it cannot read (truncated, a stale index): transformers' turn
        log.warning("reading %s directly failed; loading through transformers", checkpoint.folder, exc_info=True)
        return None
    log.info("read %s without transformers' modeling code", checkpoint.folder)
    return _loaded_from(checkpoint, tokenizer, device, dtype, replace(runtime, forward="fused"), fused=fused)


def _turn_end_ids(gguf: GgufCheckpoint, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids of the tokens the file's family ends a chat turn with (gguf_layout.turn_ends)."""
    vocabulary = tokenizer.get_vocab()
    return [vocabulary[text] for text in gguf.layout.turn_ends if text in vocabulary]


def _read_gguf(gguf: GgufCheckpoint, config: LoadConfig, tokenizer: PreTrainedTokenizerBase, device: torch.device,
               dtype: torch.dtype, runtime: RuntimeInfo, library: NativeLibrary | str) -> LoadedModel | None:
    """The model read straight from a GGUF file: on the native kernels from its blocks where they run
    it, else as a FusedLlama of its dequantized weights; None where transformers must load it."""
    from app.engine.native.gguf_weights import native_from_gguf

    max_pos = int(gguf.get("max_position_embeddings", 0) or 2048)
    eos = _merged_ids([gguf.eos_token_ids, tokenizer.eos_token_id, _turn_end_ids(gguf, tokenizer)])
    dims = LlamaDims.of(gguf.get)
    try:
        if isinstance(library, NativeLibrary) and _native_checkpoint(gguf) and unsupported_reason(dims, dtype, device) is None:
            native = native_from_gguf(gguf, library, dtype, max_pos, config.quantization)
            runtime = replace(runtime, forward=f"native ({library.isa} build)",
                              quantization=describe_weights(native, config.quantization))
            log.info("read %s without transformers: %s", gguf.path, runtime.quantization)
            return LoadedModel(None, tokenizer, eos, max_pos, device, dtype, runtime, native=native)
        fused = fused_from_gguf(gguf, dtype, device)
    except Exception:  # noqa: BLE001 - a file it cannot read after all (truncated): transformers' turn
        log.warning("reading %s directly failed; loading through transformers", gguf.path, exc_info=True)
        return None
    log.info("read %s without transformers' modeling code", gguf.path)
    return LoadedModel(None, tokenizer, eos, max_pos, device, dtype, replace(runtime, forward="fused"), fused=fused)
