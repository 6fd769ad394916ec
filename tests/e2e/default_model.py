"""Facts about the default model that e2e request bodies rely on."""

from __future__ import annotations

# Ban the model's special tokens (<|endoftext|>, <|im_start|>, <|im_end|>: its EOS ids are among them),
# so only max_tokens, a stop string or an abort can end a request, whatever greedy text a dtype gives.
NO_EOS = {"0": -100, "1": -100, "2": -100}
