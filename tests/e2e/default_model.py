"""Facts about the default model that e2e request bodies rely on."""

from __future__ import annotations

# Ban the model's special tokens (<|endoftext|>, <|im_start|>, <|im_end|>: its EOS ids are among them),
# so only max_tokens, a stop string or an abort can end a request, whatever greedy text a dtype gives.
NO_EOS = {"0": -100, "1": -100, "2": -100}

# A question whose greedy answer names Paris in every dtype and weight format, by a wide margin (the top
# two logits of its first tokens at least 1.3 apart). "What is the capital of France?" is a near-tie
# (0.08 in fp32): with 8-bit activations (bf16) the model starts "L'Étoile, ..." instead, as llama-server
# with the same GGUF does.
FRANCE = [{"role": "user", "content": "Name the capital of France."}]
