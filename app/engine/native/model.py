"""NativeLlama: a Llama-family or Gemma 2/3 forward pass in one call to the native kernels, the same for any batch.

It computes FusedLlama's function (RMSNorm, Qwen3's per-head q/k norms, RoPE, GQA attention, sliding
windows, SiLU-gated MLP, fp32 residual stream) or FusedGemma's (its sandwich norms, scaled embeddings,
GELU-tanh gate, soft-capped scores and logits, a RoPE table per layer type) with every value's
arithmetic fixed (csrc/): a token's logits depend on its sequence
alone, never on the other rows of the step, their padding, how its prompt was chunked or whether
its prefix came from the cache. Tokens of all rows go in as one flat list, so padded rows cost
nothing. Weights are packed once (weights.py); KV stays in KVStore's slabs, whose buffers the
kernels write and read in place.
"""

from __future__ import annotations

import ctypes
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.engine.models.fused_llama import FusedLlama, LlamaDims
from app.engine.native.library import (
    BF16,
    FLOAT_ARITHMETIC,
    GELU_TANH,
    INT8_ACTIVATIONS,
    KV_BF16,
    KV_F32,
    Q4,
    Q8,
    SILU,
    Batch,
    Layer,
    Model,
    NativeLibrary,
)
from app.engine.native.weights import FORMAT_NAMES, PackedMatrix, pack_dense, pack_exact, pack_grid
from app.engine.models.packed_linear import PackedLinear

KV_FORMATS = {torch.float32: KV_F32, torch.bfloat16: KV_BF16}
# fp32 arithmetic throughout; bfloat16 also lets 4- and 8-bit weights take 8-bit activations (csrc/qmatmul.h).
ARITHMETIC = {torch.float32: FLOAT_ARITHMETIC, torch.bfloat16: INT8_ACTIVATIONS}
_LOSSY = {"int4": Q4, "int8": Q8}


def unsupported_reason(dims: LlamaDims, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why the native kernels cannot run this model here, or None."""
    if device.type != "cpu":
        return f"native kernels are for CPUs (device {device})"
    if dtype not in KV_FORMATS:
        return f"dtype {dtype} (native kernels take float32 or bfloat16)"
    if dims.head_dim % 16 or not (dims.head_dim <= 128 or dims.head_dim == 256):
        return f"head_dim {dims.head_dim} (native kernels take 16, 32, ... 128 and 256)"
    if dims.num_heads % dims.num_kv_heads:
        return "query heads not a multiple of KV heads"
    return None


@dataclass
class NativeLayer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: PackedMatrix
    o: PackedMatrix
    gate_up: PackedMatrix
    down: PackedMatrix
    q_norm: torch.Tensor | None = None  # fp32 [head_dim]: an RMSNorm over each head of q before RoPE (Qwen3)
    k_norm: torch.Tensor | None = None  # and of k
    # Gemma's layer: post_norm then norms the attention's output, these the MLP's input and output.
    pre_mlp_norm: torch.Tensor | None = None
    post_mlp_norm: torch.Tensor | None = None
    window: int = 0  # a sliding layer's window (positions); 0: full attention
    rope: RopeTable | None = None  # this layer's RoPE table (Gemma 3's local layers); None: the model's

    def struct(self, rope: RopeTable) -> Layer:
        def pointer(norm: torch.Tensor | None) -> int | None:
            return None if norm is None else norm.data_ptr()

        table = self.rope or rope
        return Layer(self.input_norm.data_ptr(), self.post_norm.data_ptr(), pointer(self.q_norm), pointer(self.k_norm),
                     pointer(self.pre_mlp_norm), pointer(self.post_mlp_norm), table.cos.data_ptr(),
                     table.sin.data_ptr(), self.window or 0, 0,
                     self.qkv.struct(), self.o.struct(), self.gate_up.struct(), self.down.struct())

    def matrices(self) -> list[PackedMatrix]:
        return [self.qkv, self.o, self.gate_up, self.down]


@dataclass
class RopeTable:
    """cos and sin [positions, head_dim / 2] in fp32 (the two halves of RoPE's angles are equal)."""

    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def of(cls, rotary, head_dim: int, positions: int) -> RopeTable:
        """The model's own rotary module (any static RoPE it knows) evaluated once per position."""
        probe = torch.zeros((1, positions, head_dim), dtype=torch.float32)
        with torch.inference_mode():
            cos, sin = rotary(probe, torch.arange(positions).unsqueeze(0))
        half = head_dim // 2
        return cls(cos[0, :, :half].float().contiguous(), sin[0, :, :half].float().contiguous())


@dataclass(frozen=True)
class NativeScales:
    """What a Gemma model sets beyond Llama's layer (the defaults: Llama's): the MLP's activation, the
    embeddings' scale (as FusedGemma applies it: rounded to the weights' dtype), the scores' scale
    (None: head_dim ** -0.5) and the tanh soft-caps on scores and final logits (None: none)."""

    activation: str = "silu"  # silu | gelu_tanh
    embed_scale: float = 1.0
    attention_scale: float | None = None
    attention_cap: float | None = None
    final_cap: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {"activation": self.activation, "embed_scale": self.embed_scale,
                "attention_scale": self.attention_scale, "attention_cap": self.attention_cap,
                "final_cap": self.final_cap}


ACTIVATIONS = {"silu": SILU, "gelu_tanh": GELU_TANH}


class NativeLlama:
    """run(tokens, positions, rows, first_columns, layers, wanted) -> float32 logits of the wanted tokens."""

    def __init__(self, library: NativeLibrary, dims: LlamaDims, kv_dtype: torch.dtype, embed: PackedMatrix,
                 layers: list[NativeLayer], final_norm: torch.Tensor, lm_head: PackedMatrix, rope: RopeTable,
                 scales: NativeScales | None = None) -> None:
        self.library, self.dims, self.kv_dtype = library, dims, kv_dtype
        self.embed, self.layers, self.final_norm, self.lm_head, self.rope = embed, layers, final_norm, lm_head, rope
        self.scales = scales = scales or NativeScales()
        assert all(layer.rope is None or layer.rope.cos.shape == rope.cos.shape for layer in layers)
        self.keep_alive: object = None  # what the weights' memory belongs to, when not to them (a mapped file)
        self._layer_structs = (Layer * len(layers))(*[layer.struct(rope) for layer in layers])
        self._zero_offsets = array("q", [0] * len(layers))
        scale = dims.head_dim ** -0.5 if scales.attention_scale is None else scales.attention_scale
        self._model = Model(
            dims.num_layers, int(embed.k), dims.num_heads,
            dims.num_kv_heads, dims.head_dim, dims.intermediate_size, dims.vocab_size, KV_FORMATS[kv_dtype],
            dims.rms_norm_eps, scale, int(rope.cos.shape[0]), ARITHMETIC[kv_dtype],
            ACTIVATIONS[scales.activation], 0, scales.embed_scale, scales.attention_cap or 0.0, scales.final_cap or 0.0,
            final_norm.data_ptr(), embed.struct(), lm_head.struct(), ctypes.addressof(self._layer_structs))

    @property
    def windows(self) -> list[int | None]:
        """Each layer's sliding window (None: full attention), as FusedLlama.windows."""
        return [layer.window or None for layer in self.layers]

    @property
    def max_positions(self) -> int:
        return int(self.rope.cos.shape[0])

    def matrices(self) -> list[PackedMatrix]:
        """Every matrix once (a tied LM head is the embedding)."""
        heads = [] if self.lm_head is self.embed else [self.lm_head]
        return [m for layer in self.layers for m in layer.matrices()] + [self.embed, *heads]

    @property
    def weight_formats(self) -> dict[str, int]:
        """How many matrices are stored in each format (for the start-up log and /health)."""
        counts: dict[str, int] = {}
        for matrix in self.matrices():
            counts[FORMAT_NAMES[matrix.format]] = counts.get(FORMAT_NAMES[matrix.format], 0) + 1
        return counts

    @property
    def weight_bytes(self) -> int:
        return sum(m.nbytes for m in self.matrices())

    def run(self, token_ids: Sequence[int], positions: Sequence[int], rows: Sequence[int],
            first_columns: Sequence[int], kv: list[tuple[torch.Tensor, torch.Tensor]],
            wanted: Sequence[int], layer_offsets: Sequence[int] | None = None) -> torch.Tensor:
        """One forward pass over a flat list of tokens (one entry per token; `rows` says which KV row
        each belongs to, `first_columns` where each row's position 0 sits). `kv` holds each layer's key
        and value buffers [rows, kv_heads, columns, head_dim] with room for every position written;
        `wanted` lists the tokens whose logits come back, ascending. `layer_offsets` (one per layer;
        None: all 0) is the logical column each layer's buffer column 0 holds: on layer L a token's K/V
        is written to and read from buffer column first_columns[row] + position - layer_offsets[L], so
        a layer may keep only its last columns (a sliding layer needs no key older than its window)."""
        keys0 = kv[0][0]
        # A layer's keys and values share one layout; a sliding layer keeping fewer columns (KVStore)
        # has buffers of its own width, so the strides go per layer.
        assert len(kv) == len(self.layers)
        for keys, values in kv:
            assert keys.dtype == values.dtype == self.kv_dtype and keys.stride() == values.stride()
            assert keys.stride(-1) == 1 and keys.stride(-2) == self.dims.head_dim and keys.shape[:2] == keys0.shape[:2]
        # The kernels write each token's KV at (row, first column + position - offset): inside the buffers.
        assert max(rows) < min(keys0.shape[0], len(first_columns)) and keys0.shape[1] == self.dims.num_kv_heads
        ends = list(map(int.__add__, map(first_columns.__getitem__, rows), positions))
        if layer_offsets is None:
            offsets = self._zero_offsets
            assert all(max(ends) < keys.shape[2] for keys, _ in kv), "KV buffers too narrow for these positions"
        else:
            offsets = array("q", layer_offsets)
            assert len(offsets) == len(self.layers)
            for layer, offset, (keys, _) in zip(self.layers, offsets, kv):
                # Each token reads back to its window's start (or position 0): columns from 0 up.
                reach = layer.window - 1 if layer.window else None
                assert max(ends) - offset < keys.shape[2], "KV buffers too narrow for these positions"
                assert all(end - (position if reach is None else min(position, reach)) >= offset
                           for end, position in zip(ends, positions)), "a layer offset past a column still read"
        row_strides = array("q", [keys.stride(0) for keys, _ in kv])
        head_strides = array("q", [keys.stride(1) for keys, _ in kv])
        key_pointers = (ctypes.c_void_p * len(kv))(*[k.data_ptr() for k, _ in kv])
        value_pointers = (ctypes.c_void_p * len(kv))(*[v.data_ptr() for _, v in kv])
        ints = [array("q", values) for values in (token_ids, positions, rows, first_columns, wanted)]
        logits = torch.empty((len(ints[4]), self.dims.vocab_size), dtype=torch.float32)
        batch = Batch(len(ints[0]), len(ints[3]), len(ints[4]), torch.get_num_threads(),
                      *(values.buffer_info()[0] for values in ints), offsets.buffer_info()[0],
                      ctypes.addressof(key_pointers),
                      ctypes.addressof(value_pointers), row_strides.buffer_info()[0], head_strides.buffer_info()[0],
                      logits.data_ptr())
        self.library.forward(self._model, batch)
        return logits


def pack_linear(library: NativeLibrary, linear: PackedLinear, dtype: torch.dtype, quantization: str) -> PackedMatrix:
    """auto: exact Q4/Q8 where the fp32 weights lie on such a grid, else dense in `dtype`; int4/int8:
    that grid (lossy), where the shape allows; none: dense."""
    if quantization in _LOSSY:
        packed = pack_grid(library, linear.weight.float(), _LOSSY[quantization], exact=False, bias=linear.bias)
        if packed is not None:
            return packed
    if quantization == "auto":
        return pack_exact(library, linear.weight, dtype, linear.bias)
    return pack_dense(linear.weight, dtype, linear.bias)


def native_from_fused(fused: FusedLlama, library: NativeLibrary, dtype: torch.dtype, positions: int,
                      quantization: str = "auto") -> NativeLlama:
    """NativeLlama with a FusedLlama's weights (packed: the FusedLlama can be dropped afterwards)."""
    def pack(linear: PackedLinear) -> PackedMatrix:
        return pack_linear(library, linear, dtype, quantization)

    def norm(weight: torch.Tensor | None) -> torch.Tensor | None:
        return None if weight is None else weight.float().contiguous()

    rope = RopeTable.of(fused.rotary, fused.dims.head_dim, positions)
    # Gemma 3: a table per layer type (the one `rope` already is, shared); Gemma 2 and Llama: one.
    rotaries = getattr(fused, "rotaries", {})
    tables = {kind: rope if rotary is fused.rotary else RopeTable.of(rotary, fused.dims.head_dim, positions)
              for kind, rotary in rotaries.items()}
    layers = [NativeLayer(norm(layer.input_norm), norm(layer.post_norm), pack(layer.qkv), pack(layer.o),
                          pack(layer.gate_up), pack(layer.down), norm(layer.q_norm), norm(layer.k_norm),
                          norm(getattr(layer, "pre_mlp_norm", None)), norm(getattr(layer, "post_mlp_norm", None)),
                          layer.window or 0, tables.get(getattr(layer, "layer_type", None)))
              for layer in fused.layers]
    embed = pack(PackedLinear(fused.embed_weight))
    tied = fused.lm_head.weight is fused.embed_weight and fused.lm_head.bias is None
    lm_head = embed if tied else pack(fused.lm_head)
    return NativeLlama(library, fused.dims, dtype, embed, layers, fused.final_norm.float().contiguous(), lm_head, rope,
                       native_scales(fused))


def native_scales(fused: FusedLlama) -> NativeScales:
    """Llama's defaults, or a FusedGemma's activation, scales and caps."""
    from app.engine.models.fused_gemma import FusedGemma

    if not isinstance(fused, FusedGemma):
        return NativeScales()
    return NativeScales("gelu_tanh", float(fused.embed_scale), fused.scaling, fused.attention_cap, fused.final_cap)
