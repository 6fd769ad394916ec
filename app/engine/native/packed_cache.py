"""A checkpoint's weights as the native kernels hold them, saved beside it for the next start.

Packing an fp32 checkpoint that lies on Q4/Q8 grids means reading four times its packed size and
finding the grids: half of the default model's start-up. The first start saves the packed matrices
(safetensors, in `.tokenwire/` inside the model folder); later starts map that file instead, without
a copy (the first forward pass pulls its pages from the file cache). A file is used only if it was
made from exactly these checkpoint files (names, sizes, modification times, headers) with the same
dtype, quantization and layout; anything else is ignored, and the next save of that dtype and
quantization replaces it. Only packs holding low-bit grids are saved (a dense copy of a 16-bit
checkpoint would double its disk for little), and a folder that cannot be written just starts
without one. The bytes are the packer's own, so answers are the same either way. A Gemma pack holds
its layers' extra norms and the scales the model was packed with (metadata "scales"); windows and RoPE
tables come from the config, as a fresh read's do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from app.engine.models.attention_layers import layer_windows
from app.engine.models.fused_llama import DefaultRotary, LlamaDims
from app.engine.models.fused_gemma import gemma_rotaries
from app.engine.models.llama_checkpoint import LlamaCheckpoint, rope_theta
from app.engine.native.library import ABI_VERSION, Q4, Q8, NativeLibrary
from app.engine.native.model import NativeLayer, NativeLlama, NativeScales, RopeTable
from app.engine.native.weights import PackedMatrix

log = logging.getLogger(__name__)

FOLDER = ".tokenwire"
LAYOUT = f"native-weights-v2-abi{ABI_VERSION}"  # v2: Gemma's norms and scales
MATRICES = ("qkv", "o", "gate_up", "down")
HEAD_NORMS = ("q_norm", "k_norm")  # Qwen3's and Gemma 3's, where the layers have them
MLP_NORMS = ("pre_mlp_norm", "post_mlp_norm")  # Gemma's
_DTYPES = {"U8": torch.uint8, "F32": torch.float32}
# The code that decides what a pack holds (grids, tile layout): a change to it makes new packs.
_PACKER_SOURCES = (Path(__file__).with_name("weights.py"), Path(__file__).with_name("csrc") / "pack.h")


def _packer_digest() -> str:
    return hashlib.sha256(b"".join(path.read_bytes() for path in _PACKER_SOURCES)).hexdigest()[:16]


def cache_file(checkpoint: LlamaCheckpoint, dtype: torch.dtype, quantization: str) -> Path:
    """Where the pack of these checkpoint files for this dtype and quantization lives."""
    digest = hashlib.sha256(f"{LAYOUT} {_packer_digest()} {dtype} {quantization}".encode())
    config = checkpoint.folder / "config.json"  # sizes, RoPE, tied head: what the pack was built for
    digest.update(config.read_bytes() if config.is_file() else b"")
    for path in sorted(set(checkpoint.files.values())):
        stat = path.stat()
        digest.update(f"{path.name} {stat.st_size} {stat.st_mtime_ns}".encode())
        with open(path, "rb") as handle:
            length = struct.unpack("<Q", handle.read(8))[0]
            digest.update(handle.read(length))
    kind = f"{str(dtype).removeprefix('torch.')}-{quantization}"
    return checkpoint.folder / FOLDER / f"native-{kind}-{digest.hexdigest()[:24]}.safetensors"


def worth_saving(native: NativeLlama) -> bool:
    return any(m.format in (Q4, Q8) for m in native.matrices())


def save(native: NativeLlama, path: Path) -> None:
    """Write the pack atomically (beside its final name, then renamed); a failure is logged and dropped."""
    tensors: dict[str, torch.Tensor] = {"final_norm": native.final_norm}
    shapes: dict[str, list[int]] = {}

    def put(name: str, matrix: PackedMatrix) -> None:
        tensors[name] = matrix.data
        shapes[name] = [matrix.format, matrix.n, matrix.k]
        if matrix.bias is not None:
            tensors[f"{name}.bias"] = matrix.bias

    for index, layer in enumerate(native.layers):
        tensors[f"layers.{index}.input_norm"] = layer.input_norm
        tensors[f"layers.{index}.post_norm"] = layer.post_norm
        for name in HEAD_NORMS + MLP_NORMS:
            if getattr(layer, name) is not None:
                tensors[f"layers.{index}.{name}"] = getattr(layer, name)
        for name in MATRICES:
            put(f"layers.{index}.{name}", getattr(layer, name))
    put("embed", native.embed)
    if native.lm_head is not native.embed:
        put("lm_head", native.lm_head)
    metadata = {"layout": LAYOUT, "matrices": json.dumps(shapes), "positions": str(native.max_positions),
                "scales": json.dumps(native.scales.as_dict())}
    partial: Path | None = None
    try:
        path.parent.mkdir(exist_ok=True)
        kind = path.name.rsplit("-", 1)[0]  # a pack of another dtype or quantization stays
        for stale in path.parent.glob(f"{kind}-*.safetensors"):
            stale.unlink(missing_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            partial = Path(tmp.name)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata=metadata)
        partial.chmod(0o644)
        os.replace(partial, path)
        log.info("saved the packed weights for the next start: %s", path)
    except Exception as exc:  # noqa: BLE001 - disk full, read-only, safetensors' own errors: serve anyway
        log.info("not saving the packed weights (%s): each start packs them again", exc)
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)  # renamed away on success; a failed write's leftover otherwise


def _mapped(path: Path) -> tuple[mmap.mmap, dict, dict[str, torch.Tensor]]:
    """The file mapped copy-on-write, its metadata, and a tensor view of each entry (no copy)."""
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    length = struct.unpack("<Q", mapped[:8])[0]
    header = json.loads(mapped[8:8 + length])
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = _DTYPES[entry["dtype"]]
        count = (end - begin) // dtype.itemsize
        view = torch.frombuffer(mapped, dtype=dtype, count=count, offset=8 + length + begin) if count else \
            torch.empty(0, dtype=dtype)
        tensors[name] = view.view(entry["shape"])
    return mapped, metadata, tensors


def load(path: Path, library: NativeLibrary, dims: LlamaDims, dtype: torch.dtype,
         checkpoint: LlamaCheckpoint) -> NativeLlama | None:
    """The NativeLlama in `path`, or None when there is none (or it is not one this code wrote)."""
    if not path.is_file():
        return None
    try:
        mapped, metadata, tensors = _mapped(path)
        if metadata.get("layout") != LAYOUT:
            return None
        shapes = json.loads(metadata["matrices"])
        scales = NativeScales(**json.loads(metadata["scales"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.info("ignoring the packed weights in %s (%s)", path, exc)
        return None

    def matrix(name: str) -> PackedMatrix:
        fmt, n, k = shapes[name]
        return PackedMatrix(fmt, n, k, tensors[name], tensors.get(f"{name}.bias"))

    positions = int(metadata["positions"])
    gemma = checkpoint.family.layer == "gemma"
    if gemma:  # a table per layer type, as _gemma_from_checkpoint reads them
        tables = {kind: RopeTable.of(rotary, dims.head_dim, positions)
                  for kind, rotary in gemma_rotaries(checkpoint.config, dims.head_dim, torch.device("cpu")).items()}
        kinds = list(checkpoint.config["layer_types"])[: dims.num_layers]
        rope = tables.get("full_attention") or next(iter(tables.values()))
    else:
        rotary = DefaultRotary(rope_theta(checkpoint.config)[0], dims.head_dim, torch.device("cpu"))
        rope, tables, kinds = RopeTable.of(rotary, dims.head_dim, positions), {}, [None] * dims.num_layers
    windows = layer_windows(checkpoint.get, dims.num_layers)
    layers = [NativeLayer(tensors[f"layers.{i}.input_norm"], tensors[f"layers.{i}.post_norm"],
                          *[matrix(f"layers.{i}.{name}") for name in MATRICES],
                          *[tensors.get(f"layers.{i}.{name}") for name in HEAD_NORMS + MLP_NORMS],
                          windows[i] or 0, tables.get(kinds[i])) for i in range(dims.num_layers)]
    if any((layer.q_norm is not None) != checkpoint.family.head_norms or (layer.pre_mlp_norm is not None) != gemma
           for layer in layers) or (scales.activation == "gelu_tanh") != gemma:
        return None  # not a pack of this family's layers
    embed = matrix("embed")
    lm_head = matrix("lm_head") if "lm_head" in shapes else embed
    native = NativeLlama(library, dims, dtype, embed, layers, tensors["final_norm"], lm_head, rope, scales)
    native.keep_alive = mapped  # the views point into the mapping
    return native


def main(argv: list[str] | None = None) -> None:
    """`python -m app.engine.native.packed_cache MODEL`: pack a model folder now, as its first start
    would (the image build and `make model` do it for the default model), so that start maps it."""
    import argparse

    from app.engine.models.loader import LoadConfig, load

    parser = argparse.ArgumentParser(prog="python -m app.engine.native.packed_cache", description=main.__doc__)
    parser.add_argument("model", help="a local model folder")
    parser.add_argument("--dtype", default="auto", help="as TOKENWIRE_DTYPE (default auto)")
    parser.add_argument("--quantization", default="auto", help="as TOKENWIRE_QUANTIZATION (default auto)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the loader's lines say what happened
    load(LoadConfig(args.model, device="cpu", dtype=args.dtype, quantization=args.quantization))


if __name__ == "__main__":
    main()
