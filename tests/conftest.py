"""Shared fixtures: a tiny random Llama with a locally trained tokenizer, saved like a hub folder."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "Hello world! How are you today? I am fine, thank you.",
    "東京は日本の首都です。 Emoji: 👋🏽 🎉 ✨ and café naïve.",
    "def main():\n    print('hello')\n    return 42\n",
] * 20


def build_tiny_model(folder: Path, seed: int = 0, max_position_embeddings: int = 256) -> Path:
    """A 2-layer GQA Llama (hidden 64) with a byte-level BPE tokenizer, saved to `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(folder)
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
        eos_token_id=eos_id, bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True,
        initializer_range=0.5,  # larger than usual, so greedy text varies instead of repeating
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=[eos_id], bos_token_id=tokenizer.bos_token_id)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@functools.cache
def _load_tiny(model_dir: Path, dtype: str, forward: str = "native", quantization: str = "none"):
    from app.engine.models.loader import load
    from tests.engine.helpers import tiny_load_config

    return load(tiny_load_config(model_dir, dtype=dtype, native_kernels=forward == "native", quantization=quantization))


# The paths whose tokens are exact across batch shapes, prompt chunking and cache hits: the native
# kernels in both dtypes (row-invariant by construction; int4 weights in bf16 take the 8-bit
# activation kernels), torch's fused forward in fp32 only.
EXACT_PATHS = [("native", "float32", "none"), ("native", "bfloat16", "none"), ("native", "bfloat16", "int4"),
               ("torch", "float32", "none")]


@pytest.fixture(scope="session", params=EXACT_PATHS,
                ids=[f"{f}-{d}" + ("" if q == "none" else f"-{q}") for f, d, q in EXACT_PATHS])
def tiny_exact(request, tiny_model_dir: Path):
    """The tiny model on each exact path in turn (CPU; on a GPU the native ones fall back to torch)."""
    forward, dtype, quantization = request.param
    return _load_tiny(tiny_model_dir, dtype, forward, quantization)


@pytest.fixture(scope="session")
def tiny_fused(tiny_model_dir: Path):
    """The tiny model on torch's fused forward (native kernels off), in the dtype under test."""
    from tests.engine.helpers import TEST_DTYPE

    return _load_tiny(tiny_model_dir, TEST_DTYPE, "torch")


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Path):
    """The tiny model loaded through the real loader on the CPU (or TOKENWIRE_TEST_DEVICE), in fp32
    unless TOKENWIRE_DTYPE names another dtype: on the native kernels (on a CPU), as a server runs it."""
    from tests.engine.helpers import TEST_DTYPE

    return _load_tiny(tiny_model_dir, TEST_DTYPE)


@pytest.fixture(scope="session")
def tiny_loaded_fp32(tiny_model_dir: Path):
    """The tiny model in fp32 whatever TOKENWIRE_DTYPE says, for tests that compare tokens exactly
    across code paths where only fp32 is exact (torch's forward in bf16 is not)."""
    return _load_tiny(tiny_model_dir, "float32")


@functools.cache
def _reference_tiny(model_dir: Path, dtype: str):
    from app.engine.models.loader import load_weights, resolve_dtype, resolve_device
    from tests.engine.helpers import TEST_DEVICE

    device = resolve_device(TEST_DEVICE)
    return load_weights(str(model_dir), resolve_dtype(dtype, device)[0], device)


@pytest.fixture(scope="session")
def tiny_reference(tiny_model_dir: Path):
    """transformers' own model for the tiny folder, in the dtype under test: the reference the
    engine's forward (read straight from the checkpoint) is compared with."""
    from tests.engine.helpers import TEST_DTYPE

    return _reference_tiny(tiny_model_dir, TEST_DTYPE)


@pytest.fixture(scope="session")
def tiny_reference_fp32(tiny_model_dir: Path):
    return _reference_tiny(tiny_model_dir, "float32")



def start_redis(folder: Path):
    """Debian's redis-server on a free loopback port, no persistence (`.ci/run` installs it)."""
    import shutil
    import socket
    import subprocess
    import time

    from tests.e2e.conftest import free_port

    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A real Redis for the session (each test uses its own key namespace or flushes)."""
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session", autouse=True)
def _store_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory):
    """Apps and servers the tests start keep their store in a folder of the session, not in ./data."""
    import os

    if "TOKENWIRE_STORE_URL" in os.environ:
        yield
        return
    os.environ["TOKENWIRE_STORE_URL"] = f"sqlite:///{tmp_path_factory.mktemp('store')}/tokenwire.sqlite3"
    yield
    os.environ.pop("TOKENWIRE_STORE_URL", None)
