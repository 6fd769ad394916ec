"""Benchmark prompts: fixed text, identical on every server and every run (no randomness)."""

from __future__ import annotations

SHORT_PROMPT = ("The old lighthouse keeper climbed the spiral stairs one last time and, "
                "looking out over the dark sea, he remembered")

_SUBJECTS = ["The river pilot", "A young engineer", "The village baker", "An old librarian",
             "The night watchman", "A travelling musician", "The ship's doctor", "A quiet gardener",
             "The mountain guide", "A curious student", "The market trader", "An aging painter",
             "The railway clerk", "A patient teacher", "The harbour master", "A wandering poet",
             "The city surveyor"]
_VERBS = ["carefully repaired", "slowly described", "proudly displayed", "quietly studied",
          "eagerly measured", "reluctantly sold", "patiently copied", "cheerfully painted",
          "nervously opened", "secretly rebuilt", "thoughtfully compared", "boldly questioned",
          "gently cleaned"]
_OBJECTS = ["a brass telescope", "the faded map of the coast", "twelve wooden crates",
            "an unfinished letter", "the broken clock tower", "a basket of winter apples",
            "the heavy iron gate", "a collection of pressed flowers", "the ledger of debts",
            "a small silver compass", "the north wall of the granary"]
_PLACES = ["beside the frozen canal", "in the crowded square", "under the leaking roof",
           "near the northern bridge", "behind the customs house", "on the windy hill",
           "inside the empty chapel"]
_CODAS = ["while the bells rang for noon", "although nobody had asked for it",
          "because the storm was coming", "before the first guests arrived",
          "as the lamps were lit one by one"]


def sentence(i: int) -> str:
    """The i-th numbered sentence; strides co-prime with each list keep neighbours different."""
    return (f"{i}. {_SUBJECTS[i % 17]} {_VERBS[(i * 3) % 13]} {_OBJECTS[(i * 5) % 11]} "
            f"{_PLACES[(i * 2) % 7]}, {_CODAS[(i * 4) % 5]}.")


def long_prompt(num_sentences: int = 39) -> str:
    """About 1000 tokens (SmolLM2 tokenizer) of varied English, then a request to continue it."""
    body = " ".join(sentence(i) for i in range(1, num_sentences + 1))
    return body + f" {num_sentences + 1}."


PROMPTS = {"short": SHORT_PROMPT, "long": long_prompt()}
