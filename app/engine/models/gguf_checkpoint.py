"""Reading a Llama-family GGUF file straight into FusedLlama or the native kernels, without transformers.

transformers' `from_pretrained(gguf_file=...)` parses the whole file three times (config, tokenizer,
weights) with gguf's GGUFReader, which makes a numpy view of every element of the tokenizer's arrays
(seconds for a 49k vocabulary), then builds the modeling classes and dequantizes every tensor. Here the
header is parsed once (`_Header`: a plain struct walk that skips what it does not need), the tensors
are memory-mapped, and only what must be dequantized is, with gguf's own numpy code (gguf.quants).

What it reads: the architectures FusedLlama computes whose GGUF metadata says everything transformers
would build them from: `llama` (not one named "mistral", which transformers turns into a MistralConfig
with its default sliding window), `qwen2`, `qwen3` and `phi3` (gguf_layout.py: how each is stored), and
`gemma2` / `gemma3` into FusedGemma (their config read as llama.cpp reads it: _gemma_config). The
config is the one transformers' GGUF loader makes (integrations/ggml.py's key mapping; `tie_word_embeddings`
when there is no `output.weight`), and the tensors are exactly the ones it loads: llama.cpp's converter
permutes the rows of Llama's Q and K projections for its RoPE layout, undone here as transformers'
LlamaTensorProcessor does (a row permutation, so it applies to quantized blocks unchanged). Anything
else is refused with a one-line reason naming the GGUF field or tensor, and the loader takes
transformers' path.

For the native kernels, a fused matrix (q/k/v, gate/up, o, down, the embedding) whose parts are all
Q4_0/Q4_1 blocks is packed straight from them as the kernels' Q4 (scale, minimum and nibbles are
GGUF Q4_1's; Q4_0's minimum is -8 x scale, exact in fp16), all Q8_0 blocks as Q8: no float round trip,
every weight the value gguf.quants dequantizes it to. Other types are dequantized and packed as a
safetensors checkpoint's weights would be.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from app.engine.models.attention_layers import layer_windows
from app.engine.models.families import by_model_type
from app.engine.models.fused_gemma import FusedGemma, GemmaLayer, GemmaScales, gemma_rotaries
from app.engine.models.fused_llama import DefaultRotary, FusedLayer, FusedLlama, LlamaDims
from app.engine.models.gguf_layout import LAYOUTS, GgufLayout, layout_for
from app.engine.models.packed_linear import PackedLinear

# GGUF value types (gguf.GGUFValueType) -> struct format of one value.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_DEFAULT_ALIGNMENT = 32

_ARCHITECTURES = tuple(LAYOUTS)
# `{arch}.<key>` -> config key, as transformers' GGUF_CONFIG_MAPPING has them for these architectures.
_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
_REQUIRED = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count",
             "attention.layer_norm_rms_epsilon")
# Fields that only restate a size (checked against it) or are off when they hold these values.
_SIZE_FIELDS = ("rope.dimension_count", "attention.key_length", "attention.value_length")
_OFF = {"rope.scaling.type": ("none",), "expert_count": (0,), "expert_used_count": (0,)}
# Fields transformers ignores, harmless when they reach the context length (llama.cpp's Phi-3
# conversion writes its context length as the window when the model has none).
_WHOLE_CONTEXT = ("attention.sliding_window", "rope.scaling.original_context_length")



@dataclass
class GgufTensor:
    name: str
    type: int  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # torch order: [outputs, inputs] for a matrix
    data: np.ndarray  # uint8 [rows, bytes per row] (or the float array for F32/F16), mapped from the file

    def dequantized(self) -> np.ndarray:
        """float32 in `shape`, as gguf.quants (and so transformers) computes it."""
        from gguf.quants import dequantize

        values = np.asarray(dequantize(self.data, self.type), dtype=np.float32).reshape(self.shape)
        return values if values.flags.writeable else values.copy()  # F32 tensors are views of the file


@dataclass
class GgufCheckpoint:
    """A GGUF file this module can read: the config transformers would build, and its tensors."""

    path: Path
    config: dict
    tensors: dict[str, GgufTensor]
    eos_token_ids: tuple[int, ...] = ()
    keep_alive: object = field(default=None, repr=False)  # the file's mapping, which the tensors view

    def get(self, key: str, default: object = None) -> object:
        return self.config.get(key, default)

    @property
    def layout(self) -> GgufLayout:
        return layout_for(self.config["model_type"])

    @property
    def folder(self) -> Path:
        return self.path.parent


class _Header:
    """The metadata and tensor table of a GGUF file (format version 2 or 3, little-endian)."""

    def __init__(self, buffer, skip_strings: tuple[str, ...] = ("tokenizer.",)) -> None:
        self.buffer, self.offset = buffer, 0
        if bytes(buffer[:4]) != b"GGUF":
            raise ValueError("not a GGUF file (no GGUF magic)")
        version, tensor_count, kv_count = struct.unpack_from("<IQQ", buffer, 4)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (big-endian, or not one this reader knows)")
        self.offset = 24
        self.fields: dict[str, object] = {}
        for _ in range(kv_count):
            key = self._string()
            kind = self._scalar("I")
            skip = kind == _ARRAY and key.startswith(skip_strings)
            self.fields[key] = self._value(kind, skip)
        self.tensor_infos = []
        for _ in range(tensor_count):
            name = self._string()
            dims = struct.unpack_from(f"<{self._scalar('I')}Q", buffer, self.offset)
            self.offset += 8 * len(dims)
            kind, offset = struct.unpack_from("<IQ", buffer, self.offset)
            self.offset += 12
            self.tensor_infos.append((name, tuple(reversed(dims)), kind, offset))
        alignment = int(self.fields.get("general.alignment", _DEFAULT_ALIGNMENT))
        self.data_start = -(-self.offset // alignment) * alignment

    def _scalar(self, fmt: str):
        value = struct.unpack_from("<" + fmt, self.buffer, self.offset)[0]
        self.offset += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        length = self._scalar("Q")
        value = bytes(self.buffer[self.offset:self.offset + length]).decode("utf-8", errors="replace")
        self.offset += length
        return value

    def _value(self, kind: int, skip: bool = False):
        if kind in _SCALARS:
            return self._scalar(_SCALARS[kind])
        if kind == _STRING:
            return self._string()
        if kind != _ARRAY:
            raise ValueError(f"unknown GGUF value type {kind}")
        item, count = struct.unpack_from("<IQ", self.buffer, self.offset)
        self.offset += 12
        if item in _NUMPY:
            values = np.frombuffer(self.buffer, dtype=_NUMPY[item], count=count, offset=self.offset)
            self.offset += values.nbytes
            return values
        if item == _STRING and skip:  # a vocabulary or merges: walked over, kept as its length
            for _ in range(count):
                self.offset += 8 + struct.unpack_from("<Q", self.buffer, self.offset)[0]
            return _Skipped(count)
        return [self._value(item) for _ in range(count)]


@dataclass(frozen=True)
class _Skipped:
    """A string array not kept (only its length is needed)."""

    count: int

    def __len__(self) -> int:
        return self.count


def _tensor(header: _Header, name: str, shape: tuple[int, ...], kind: int, offset: int) -> GgufTensor:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    qtype = GGMLQuantizationType(kind)
    block, type_size = GGML_QUANT_SIZES[qtype]
    rows, row = int(np.prod(shape[:-1])) if len(shape) > 1 else 1, shape[-1]
    if row % block:
        raise ValueError(f"tensor {name}: {row} inputs is not a whole number of {qtype.name} blocks")
    row_bytes = row // block * type_size
    start = header.data_start + offset
    data = np.frombuffer(header.buffer, dtype=np.uint8, count=rows * row_bytes, offset=start)
    data = data.reshape(rows, row_bytes) if len(shape) > 1 else data
    if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        data = data.view(np.float32 if qtype == GGMLQuantizationType.F32 else np.float16)
    return GgufTensor(name, int(qtype), tuple(int(d) for d in shape), data)


def _config(fields: dict, arch: str, tensors: dict[str, tuple]) -> tuple[dict, str | None]:
    """The config transformers' GGUF loader builds for `arch`, or why this module does not read it."""
    def field_name(key: str) -> str:
        return f"{arch}.{key}"

    missing = [field_name(key) for key in _REQUIRED if field_name(key) not in fields]
    if missing:
        return {}, f"GGUF field {missing[0]} is missing"
    config: dict = {"model_type": arch, "architectures": None}
    for key, value in fields.items():
        if not key.startswith(arch + "."):
            continue
        short = key[len(arch) + 1:]
        if short in _CONFIG_KEYS:
            config[_CONFIG_KEYS[short]] = value.item() if isinstance(value, np.generic) else value
        elif short in _OFF:
            if value not in _OFF[short]:
                return {}, f"GGUF field {key}={value!r}: the direct GGUF reader serves dense models with the default RoPE"
        elif short in _WHOLE_CONTEXT and isinstance(value, (int, np.integer)):
            context = fields.get(field_name("context_length"), LAYOUTS[arch].defaults["max_position_embeddings"])
            if value < context:
                return {}, f"GGUF field {key}={value}: less than the context, {context} (transformers ignores it)"
        elif short not in _SIZE_FIELDS:
            return {}, f"GGUF field {key}={_short(value)} is not one the direct GGUF reader knows"
    for key in ("num_attention_heads", "num_key_value_heads"):
        if not isinstance(config.get(key, 0), int):
            return {}, f"GGUF field {arch}.attention.head_count{'_kv' if 'key' in key else ''} varies per layer"
    heads, layout = config["num_attention_heads"], LAYOUTS[arch]
    config.setdefault("num_key_value_heads", heads)
    if heads <= 0 or (config["hidden_size"] % heads and "head_dim" not in layout.defaults):
        return {}, f"GGUF field {arch}.attention.head_count={heads} does not divide {arch}.embedding_length"
    head_dim = layout.head_dim(config["hidden_size"], heads)
    for short in _SIZE_FIELDS:  # transformers ignores these: the head size it builds must be what they say
        if field_name(short) in fields and int(fields[field_name(short)]) != head_dim:
            return {}, (f"GGUF field {field_name(short)}={int(fields[field_name(short)])} is not the head size "
                        f"transformers builds ({head_dim})")
    config["head_dim"] = head_dim
    if "vocab_size" not in config:  # transformers counts the tokenizer's tokens then
        tokens = fields.get("tokenizer.ggml.tokens")
        if tokens is None:
            return {}, f"GGUF field {arch}.vocab_size is missing (and no tokenizer.ggml.tokens)"
        config["vocab_size"] = len(tokens)
    config["tie_word_embeddings"] = "output.weight" not in tensors
    for key, value in layout.defaults.items():  # the config class's defaults
        config.setdefault(key, value)
    return config, None


_SLIDING, _FULL = "sliding_attention", "full_attention"
# Gemma's `{arch}.<key>` read as they are, and the ones _gemma_config reads itself (llama.cpp's
# llama_model_gemma2/gemma3::load_arch_hparams and its general hparams).
_GEMMA_KEYS = {
    "context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
    "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps", "attention.key_length": "head_dim", "vocab_size": "vocab_size",
}
_GEMMA_READ = {"attention.value_length", "rope.dimension_count", "attention.sliding_window",
               "attention.sliding_window_pattern", "final_logit_softcapping", "rope.freq_base", "rope.freq_base_swa",
               "rope.scaling.type", "rope.scaling.factor", "rope.scale_linear"}
# The model size llama.cpp scales queries by hidden / heads instead of head_dim for (Gemma 2 and 3 27B,
# as google's gemma_pytorch does), by layer count; transformers' configs say it as query_pre_attn_scalar.
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def _gemma_config(fields: dict, arch: str, tensors: dict[str, tuple]) -> tuple[dict, str | None]:
    """The Gemma 2/3 config (as transformers 5 saves one) that the file means, read as llama.cpp reads
    it, or why this module does not read it. transformers' own GGUF loader maps fewer keys (not the
    caps, the local RoPE base, RoPE scaling or the layer pattern) and takes its config class's defaults
    for the rest: the same model wherever the file holds those defaults, as Google's checkpoints do
    (Gemma 3 4B and larger aside: their global layers' linear RoPE scaling, which it drops)."""
    def value(short: str, default: object = None) -> object:
        found = fields.get(f"{arch}.{short}", default)
        return found.item() if isinstance(found, np.generic) else found

    missing = [f"{arch}.{key}" for key in _REQUIRED if f"{arch}.{key}" not in fields]
    if missing:
        return {}, f"GGUF field {missing[0]} is missing"
    known = set(_GEMMA_KEYS) | _GEMMA_READ | ({"attn_logit_softcapping"} if arch == "gemma2" else set())
    for key, found in fields.items():
        if key.startswith(arch + ".") and key[len(arch) + 1:] not in known:
            return {}, f"GGUF field {key}={_short(found)} is not one the direct GGUF reader knows"
    layout = LAYOUTS[arch]
    config: dict = {"model_type": layout.model_type or arch, "architectures": None}
    for short, key in _GEMMA_KEYS.items():
        if f"{arch}.{short}" in fields:
            config[key] = value(short)
    for key, short in (("num_attention_heads", "head_count"), ("num_key_value_heads", "head_count_kv")):
        if not isinstance(config.get(key, 0), int) or config.get(key, 1) <= 0:
            return {}, f"GGUF field {arch}.attention.{short}={_short(config.get(key))}: one positive count for every layer"
    hidden, heads, layers = config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]
    config.setdefault("num_key_value_heads", heads)
    head_dim = config.setdefault("head_dim", hidden // heads)  # llama.cpp: n_embd / n_head unless key_length
    for short in ("attention.value_length", "rope.dimension_count"):
        if value(short, head_dim) != head_dim:
            return {}, f"GGUF field {arch}.{short}={value(short)} is not the head size ({head_dim})"
    # Layers: Gemma 2 slides 4,096 positions on every other layer unless the file says otherwise;
    # Gemma 3 slides only where the file names a window, on five layers of six unless it names a pattern.
    window = value("attention.sliding_window", 4096 if arch == "gemma2" else 0)
    pattern = value("attention.sliding_window_pattern", 2 if arch == "gemma2" else 6)
    if arch == "gemma3" and not window:
        config["layer_types"], config["sliding_window"] = [_FULL] * layers, None
    elif isinstance(pattern, np.ndarray) and pattern.shape == (layers,):
        config["layer_types"], config["sliding_window"] = [_SLIDING if swa else _FULL for swa in pattern], int(window)
    elif isinstance(pattern, int) and pattern >= 0:
        config["layer_types"] = [_SLIDING if pattern == 0 or i % pattern < pattern - 1 else _FULL for i in range(layers)]
        config["sliding_window"] = int(window)
    else:
        return {}, f"GGUF field {arch}.attention.sliding_window_pattern={_short(pattern)} is not a pattern of {layers} layers"
    # RoPE: the global layers' base and linear scale; the local layers' own base (Gemma 2: the global
    # one unless set) and, on Gemma 2 only, the same scale.
    theta = float(value("rope.freq_base", 10000.0))
    local_theta = float(value("rope.freq_base_swa", theta if arch == "gemma2" else 10000.0))
    factor = float(value("rope.scaling.factor", value("rope.scale_linear", 0.0)) or 1.0)
    scaling = value("rope.scaling.type", "linear")
    if factor != 1.0 and scaling != "linear":
        return {}, f"GGUF field {arch}.rope.scaling.type={scaling!r}: the direct GGUF reader scales RoPE linearly only"

    def rope(base: float, scale: float) -> dict:
        return {"rope_type": "linear", "factor": scale, "rope_theta": base} if scale != 1.0 else \
            {"rope_type": "default", "rope_theta": base}

    config["rope_parameters"] = {_FULL: rope(theta, factor),
                                 _SLIDING: rope(local_theta, factor if arch == "gemma2" else 1.0)}
    final_cap = value("final_logit_softcapping", 30.0 if arch == "gemma2" else 0.0)
    attention_cap = value("attn_logit_softcapping", 50.0) if arch == "gemma2" else None
    if arch == "gemma2" and (not final_cap or not attention_cap):
        return {}, f"GGUF field {arch}.*_softcapping={final_cap or attention_cap}: Gemma 2 always caps"
    config["final_logit_softcapping"] = float(final_cap) if final_cap else None
    config["attn_logit_softcapping"] = float(attention_cap) if attention_cap else None
    config["query_pre_attn_scalar"] = hidden // heads if layers == _GEMMA_27B_LAYERS[arch] else head_dim
    if "vocab_size" not in config:  # llama.cpp counts the tokenizer's tokens (so does transformers)
        tokens = fields.get("tokenizer.ggml.tokens")
        if tokens is None:
            return {}, f"GGUF field {arch}.vocab_size is missing (and no tokenizer.ggml.tokens)"
        config["vocab_size"] = len(tokens)
    config["tie_word_embeddings"] = "output.weight" not in tensors
    config.update(hidden_activation="gelu_pytorch_tanh", attention_bias=False, use_bidirectional_attention=False)
    config.setdefault("max_position_embeddings", 8192 if arch == "gemma2" else 131072)
    from app.engine.models.llama_checkpoint import gemma_rope_refusal

    family = by_model_type(config["model_type"])
    refusal = family.refusal(lambda key, default: config.get(key, default)) or gemma_rope_refusal(config)
    return config, (f"GGUF {arch}: {refusal}" if refusal else None)


def _short(value: object) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def expected_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    """{GGUF tensor name: torch-order shape} that transformers loads for this config."""
    dims, layout = LlamaDims.of(config.get), layout_for(config["model_type"])
    hidden, vocab, inter = int(config["hidden_size"]), dims.vocab_size, dims.intermediate_size
    q_out, kv_out = dims.num_heads * dims.head_dim, dims.num_kv_heads * dims.head_dim
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    if not config["tie_word_embeddings"] and layout.untied:  # Gemma 2's output is always the embedding
        shapes["output.weight"] = (vocab, hidden)
    # Each stored matrix's rows: the parts it holds (one, or a fused [q; k; v] / [gate; up]).
    parts = {"qkv": [q_out, kv_out, kv_out], "o": [hidden], "gate_up": [inter, inter], "down": [hidden]}
    inputs = {"qkv": hidden, "o": q_out, "gate_up": hidden, "down": inter}
    for i in range(dims.num_layers):
        shapes[f"blk.{i}.attn_norm.weight"] = shapes[f"blk.{i}.ffn_norm.weight"] = (hidden,)
        if layout.gemma:  # after attention and after the MLP (ffn_norm: before the MLP)
            shapes[f"blk.{i}.post_attention_norm.weight"] = shapes[f"blk.{i}.post_ffw_norm.weight"] = (hidden,)
        for matrix, names in layer_names(layout, i).items():
            rows = parts[matrix] if len(names) == len(parts[matrix]) else [sum(parts[matrix])]
            for name, out in zip(names, rows, strict=True):
                shapes[name + ".weight"] = (out, inputs[matrix])
                if layout.qkv_biases and matrix == "qkv":  # Qwen2 always has these biases
                    shapes[name + ".bias"] = (out,)
        if layout.head_norms:
            shapes[f"blk.{i}.attn_q_norm.weight"] = shapes[f"blk.{i}.attn_k_norm.weight"] = (dims.head_dim,)
    return shapes


def open_gguf(path: str | Path) -> GgufCheckpoint | str:
    """The GGUF file at `path`, or why this module cannot read it (one line, naming the field)."""
    path = Path(path)
    if path.suffix != ".gguf" or not path.is_file():
        return "not a local .gguf file"
    try:
        with open(path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        header = _Header(mapped)
    except (OSError, ValueError, struct.error) as exc:
        return f"unreadable GGUF ({type(exc).__name__}: {exc})"
    fields = header.fields
    arch = fields.get("general.architecture")
    if arch not in _ARCHITECTURES:
        return f"GGUF field general.architecture={arch!r} is not one of {list(_ARCHITECTURES)}"
    if arch == "llama" and fields.get("general.name") == "mistral":
        return "GGUF field general.name='mistral': transformers reads it as Mistral, with its default sliding window"
    infos = {name: (shape, kind, offset) for name, shape, kind, offset in header.tensor_infos}
    config, refusal = (_gemma_config if LAYOUTS[arch].gemma else _config)(fields, arch, infos)
    if refusal:
        return refusal
    expected = expected_tensors(config)
    unknown, absent = sorted(infos.keys() - expected.keys()), sorted(expected.keys() - infos.keys())
    if unknown or absent:
        return f"GGUF tensor {(unknown or absent)[0]} is {'not one the direct reader knows' if unknown else 'missing'}"
    wrong = [name for name in sorted(infos) if infos[name][0] != expected[name]]
    if wrong:
        return f"GGUF tensor {wrong[0]} has shape {list(infos[wrong[0]][0])}, not {list(expected[wrong[0]])}"
    try:
        tensors = {name: _tensor(header, name, *info) for name, info in infos.items()}
    except (ValueError, KeyError) as exc:  # a type gguf does not know, a truncated file
        return f"unreadable GGUF tensors ({type(exc).__name__}: {exc})"
    eos = fields.get("tokenizer.ggml.eos_token_id", LAYOUTS[arch].eos_token_id)  # else the config class's
    ends = [eos, fields.get("tokenizer.ggml.eot_token_id")]  # an end-of-turn token, where the file names one
    ids = tuple(dict.fromkeys(int(token) for token in ends if token is not None))
    return GgufCheckpoint(path, config, tensors, ids, mapped)


def unpermute_rows(rows: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's permutation of a Q or K projection's rows (any trailing axes: floats or the
    bytes of quantized blocks), as transformers' LlamaTensorProcessor._reverse_permute_weights does."""
    half = rows.shape[0] // heads // 2
    return rows.reshape(heads, half, 2, *rows.shape[1:]).swapaxes(2, 1).reshape(rows.shape)


def row_blocks(checkpoint: GgufCheckpoint, name: str) -> np.ndarray:
    """A tensor's stored rows (quantized blocks or floats) in transformers' row order."""
    return _in_transformers_order(checkpoint, name, checkpoint.tensors[name].data)


def dequantized(checkpoint: GgufCheckpoint, name: str) -> np.ndarray:
    """float32 values of a tensor in transformers' layout (rows un-permuted)."""
    return _in_transformers_order(checkpoint, name, checkpoint.tensors[name].dequantized())


def _in_transformers_order(checkpoint: GgufCheckpoint, name: str, rows: np.ndarray) -> np.ndarray:
    if checkpoint.layout.permuted_qk and (".attn_q." in name or ".attn_k." in name):
        heads = checkpoint.config["num_attention_heads" if ".attn_q." in name else "num_key_value_heads"]
        return unpermute_rows(rows, heads)
    return rows


class _Reader:
    """Tensors by GGUF name as transformers holds them: dequantized to float32, then `dtype`."""

    def __init__(self, checkpoint: GgufCheckpoint, dtype: torch.dtype, device: torch.device) -> None:
        self.checkpoint, self.dtype, self.device = checkpoint, dtype, device

    def __call__(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(dequantized(self.checkpoint, name))).to(
            device=self.device, dtype=self.dtype)

    def maybe(self, name: str) -> torch.Tensor | None:
        return self(name) if name in self.checkpoint.tensors else None

    def fused(self, names: list[str]) -> PackedLinear:
        weights = [self(f"{name}.weight") for name in names]
        biases = [self.maybe(f"{name}.bias") for name in names]
        bias = None if all(b is None for b in biases) else torch.cat(
            [b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases)])
        return PackedLinear(torch.cat(weights), bias)

    def norm(self, name: str) -> torch.Tensor:
        return self(name).float()  # through the model's dtype first, as transformers holds it

    def gemma_norm(self, name: str) -> torch.Tensor:
        """A Gemma norm's scale, 1 + weight, from the stored 1 + weight: transformers' GGUF loader
        subtracts the 1 (in fp32) and holds the weight in the model's dtype; Gemma's norm adds it back."""
        weight = np.ascontiguousarray(dequantized(self.checkpoint, name)) - np.float32(1.0)
        return 1.0 + torch.from_numpy(weight).to(device=self.device, dtype=self.dtype).float()


def layer_names(layout: GgufLayout, index: int) -> dict[str, list[str]]:
    """The GGUF tensors (without .weight/.bias) of each fused matrix of layer `index`."""
    prefix = f"blk.{index}."
    return {"qkv": [prefix + name for name in layout.qkv], "o": [prefix + "attn_output"],
            "gate_up": [prefix + name for name in layout.gate_up], "down": [prefix + "ffn_down"]}


def head_norm_names(layout: GgufLayout, index: int) -> tuple[str, str] | None:
    """Qwen3's per-head q and k norms of layer `index`, where the architecture has them."""
    return (f"blk.{index}.attn_q_norm.weight", f"blk.{index}.attn_k_norm.weight") if layout.head_norms else None


def fused_from_gguf(checkpoint: GgufCheckpoint, dtype: torch.dtype, device: torch.device) -> FusedLlama:
    """FusedLlama (FusedGemma for Gemma) with the file's weights dequantized, in `dtype` on `device` (as
    transformers loads them)."""
    dims = LlamaDims.of(checkpoint.get)
    read = _Reader(checkpoint, dtype, device)
    if checkpoint.layout.gemma:
        return _gemma_from_gguf(checkpoint, read, dims, device)
    layers = []
    for i in range(dims.num_layers):
        names, head_norms = layer_names(checkpoint.layout, i), head_norm_names(checkpoint.layout, i)
        q_norm, k_norm = (read.norm(name) for name in head_norms) if head_norms else (None, None)
        layers.append(FusedLayer(
            input_norm=read.norm(f"blk.{i}.attn_norm.weight"), qkv=read.fused(names["qkv"]),
            o=read.fused(names["o"]), post_norm=read.norm(f"blk.{i}.ffn_norm.weight"),
            gate_up=read.fused(names["gate_up"]), down=read.fused(names["down"]), q_norm=q_norm, k_norm=k_norm))
    embed = read("token_embd.weight")
    lm_head = PackedLinear(embed) if checkpoint.get("tie_word_embeddings") else PackedLinear(read("output.weight"))
    return FusedLlama(dims, embed, DefaultRotary(float(checkpoint.get("rope_theta")), dims.head_dim, device),
                      layers, read.norm("output_norm.weight"), lm_head)


def _gemma_from_gguf(checkpoint: GgufCheckpoint, read: _Reader, dims: LlamaDims, device: torch.device) -> FusedGemma:
    """FusedGemma from a Gemma 2/3 file: its norms stored as 1 + weight (gemma_norm), RoPE per layer type."""
    config, layout = checkpoint.config, checkpoint.layout
    windows = layer_windows(checkpoint.get, dims.num_layers)
    layers = []
    for i, (kind, window) in enumerate(zip(config["layer_types"][: dims.num_layers], windows)):
        names, head_norms = layer_names(layout, i), head_norm_names(layout, i)
        q_norm, k_norm = (read.gemma_norm(name) for name in head_norms) if head_norms else (None, None)
        layers.append(GemmaLayer(
            input_norm=read.gemma_norm(f"blk.{i}.attn_norm.weight"), qkv=read.fused(names["qkv"]),
            o=read.fused(names["o"]), post_norm=read.gemma_norm(f"blk.{i}.post_attention_norm.weight"),
            gate_up=read.fused(names["gate_up"]), down=read.fused(names["down"]), q_norm=q_norm, k_norm=k_norm,
            window=window, pre_mlp_norm=read.gemma_norm(f"blk.{i}.ffn_norm.weight"),
            post_mlp_norm=read.gemma_norm(f"blk.{i}.post_ffw_norm.weight"), layer_type=kind))
    embed = read("token_embd.weight")
    lm_head = PackedLinear(embed) if config["tie_word_embeddings"] else PackedLinear(read("output.weight"))
    return FusedGemma(dims, embed, gemma_rotaries(config, dims.head_dim, device), layers,
                      read.gemma_norm("output_norm.weight"), lm_head,
                      GemmaScales.of(checkpoint.get, by_model_type(config["model_type"])))
