"""Picking a model's chat format from its chat template: the first family whose markers the template
holds, in this order (harmony before the others: its templates mention no other family's markers, but
the reverse is not guaranteed); Hermes when none match. A new family is one module listed here."""

from __future__ import annotations

from collections.abc import Mapping

from app.chat_formats import gemma, harmony, hermes, llama3_json, mistral
from app.chat_formats.format import ChatFormat

FAMILIES: tuple[ChatFormat, ...] = (harmony.FORMAT, gemma.FORMAT, mistral.FORMAT, hermes.FORMAT, llama3_json.FORMAT)
DEFAULT = hermes.FORMAT


def format_for(template: str | Mapping[str, str] | None) -> ChatFormat:
    """The format of a chat template (a tokenizer's named templates: all of them together)."""
    text = "\n".join(template.values()) if isinstance(template, Mapping) else (template or "")
    for family in FAMILIES:
        if family.matches(text):
            specialise = getattr(family, "for_template", None)
            return specialise(text) if specialise else family
    return DEFAULT


def by_name(name: str, template: str | Mapping[str, str] | None = None) -> ChatFormat:
    """A format by name (the template, when given, picks its variant)."""
    chosen = format_for(template)
    if chosen.name == name:
        return chosen
    return next((family for family in FAMILIES if family.name == name), DEFAULT)
