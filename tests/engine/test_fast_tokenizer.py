"""FastTokenizer and our chat-template rendering give exactly what transformers' tokenizer gives, for the
tiny model's folder and the default model's, so start-up can skip importing transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from jinja2.exceptions import SecurityError, TemplateError
from transformers import AutoTokenizer

from app.engine.text import chat_template
from app.engine.models.loader import load_tokenizer
from app.engine.text.tokenizer import FastTokenizer, applies_to

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "models" / "SmolLM2-135M-Instruct"
TEXTS = ["The capital of France is Paris.", "東京は日本の首都です 👋🏽 café naïve", "<|im_start|>user\nhi<|im_end|>\n",
         "  spaces\tand\ttabs  \n\n", "def f(x):\n    return x ** 2\n", "", "a" * 300, "<|endoftext|><|im_end|>x"]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}}, "required": ["city"]}}}]
CHATS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello.", "tool_calls": None}, {"role": "user", "content": "{{ 7*7 }} é"}],
    [{"role": "user", "content": "Think"}, {"role": "assistant", "content": "Done.", "reasoning": "Hmm."}],
]


def _folders(tiny_model_dir: Path) -> list[Path]:
    return [tiny_model_dir] + ([DEFAULT] if (DEFAULT / "tokenizer.json").is_file() else [])


@pytest.fixture(params=["tiny", "default"])
def pair(request, tiny_model_dir):
    folder = tiny_model_dir if request.param == "tiny" else DEFAULT
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("the default model is not prepared")
    return FastTokenizer.from_folder(folder), AutoTokenizer.from_pretrained(str(folder))


def test_the_loader_uses_it_for_plain_fast_tokenizer_folders(tiny_model_dir):
    assert applies_to(tiny_model_dir) is None
    assert isinstance(load_tokenizer(str(tiny_model_dir)), FastTokenizer)


def test_encoding_and_decoding_match_transformers(pair):
    ours, theirs = pair
    for text in TEXTS:
        for special in (True, False):
            assert ours.encode(text, add_special_tokens=special) == theirs.encode(text, add_special_tokens=special)
        ids = theirs.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    ids = list(range(0, len(theirs), 37))
    assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
    assert ours.convert_tokens_to_ids(["<|im_end|>", "a", "no such token"]) == \
        theirs.convert_tokens_to_ids(["<|im_end|>", "a", "no such token"])


def test_special_tokens_and_vocabulary_match_transformers(pair):
    ours, theirs = pair
    assert (ours.eos_token_id, ours.bos_token_id, ours.unk_token_id, ours.pad_token_id) == \
        (theirs.eos_token_id, theirs.bos_token_id, theirs.unk_token_id, theirs.pad_token_id)
    assert ours.special_tokens_map == {k: v for k, v in theirs.special_tokens_map.items() if isinstance(v, str)}
    assert sorted(ours.all_special_ids) == sorted(theirs.all_special_ids)
    assert ours.get_vocab() == theirs.get_vocab() and len(ours) == len(theirs)
    assert ours.model_max_length == theirs.model_max_length


@pytest.mark.parametrize("chat", CHATS, ids=["one", "multi-turn", "reasoning"])
@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no-tools", "tools"])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_templates_render_as_transformers_renders_them(pair, chat, tools, generation_prompt):
    ours, theirs = pair
    expected = theirs.apply_chat_template(chat, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)
    assert ours.apply_chat_template(chat, tools=tools, tokenize=False, add_generation_prompt=generation_prompt) == expected


TEMPLATE_FEATURES = (
    "{% for m in messages %}{% generation %}[{{ m.role }}:{{ m.content | tojson }}]{% endgeneration %}{% endfor %}"
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% if ns.n > 5 %}{% break %}"
    "{% endif %}{% endfor %}{{ ns.n }}|{{ dict(a=1) | tojson }}|{{ bos_token }}|{{ tools | tojson(indent=1) }}"
    "{% if add_generation_prompt %}<go>{% endif %}{{ extra }}"
)


def test_every_helper_transformers_gives_templates_renders_the_same(tiny_model_dir):
    ours, theirs = FastTokenizer.from_folder(tiny_model_dir), AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ours.chat_template = theirs.chat_template = TEMPLATE_FEATURES
    chat = CHATS[1]
    assert ours.apply_chat_template(chat, tools=TOOLS, add_generation_prompt=True, extra="é") == \
        theirs.apply_chat_template(chat, tools=TOOLS, tokenize=False, add_generation_prompt=True, extra="é")


def test_a_template_can_refuse_and_cannot_escape_its_sandbox():
    with pytest.raises(TemplateError, match="no system"):
        chat_template.render("{{ raise_exception('no system') }}", [{"role": "user", "content": "x"}], {})
    with pytest.raises(SecurityError):
        chat_template.render("{% set ns = namespace() %}{% set ns._x = 1 %}", [{"role": "user", "content": "x"}], {})
    with pytest.raises(SecurityError):
        chat_template.render("{{ messages.__class__.__mro__ }}", [{"role": "user", "content": "x"}], {})


def test_named_templates_choose_tool_use_when_tools_are_offered():
    named = {"default": "D{{ messages | length }}", "tool_use": "T{{ tools | length }}"}
    user = [{"role": "user", "content": "x"}]
    assert chat_template.render(named, user, {}) == "D1"
    assert chat_template.render(named, user, {}, tools=TOOLS) == "T1"


@pytest.mark.parametrize("change", ["clean_up_tokenization_spaces", "special_tokens_map.json", "added_tokens.json",
                                    "additional_chat_templates", "unknown pad token"])
def test_folders_it_cannot_reproduce_go_to_transformers(tmp_path, tiny_model_dir, change):
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    if change == "clean_up_tokenization_spaces":
        config["clean_up_tokenization_spaces"] = True
    elif change == "unknown pad token":  # transformers adds it to the vocabulary as a new token
        config["pad_token"] = "<not-in-the-vocabulary>"
    elif change == "additional_chat_templates":
        (tmp_path / change).mkdir()
        (tmp_path / change / "tool_use.jinja").write_text("T{{ tools | length }}")
    else:
        (tmp_path / change).write_text("{}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert applies_to(tmp_path) == (None if change == "unknown pad token" else change)
    assert not isinstance(load_tokenizer(str(tmp_path)), FastTokenizer)


def test_serving_the_default_model_never_imports_transformers(tiny_model_dir):
    """Half a second of start-up: a fresh interpreter loads the tiny model, builds the engine's pieces
    and renders a chat without transformers in sys.modules."""
    script = (
        "import sys\n"
        "import app.main, app.lifecycle\n"
        "from app.engine.models.loader import LoadConfig, load\n"
        "from app.engine.core import build_core\n"
        "from app.engine.scheduling.scheduler import SchedulerConfig\n"
        "from app.engine.text.prompts import PromptEncoder\n"
        f"loaded = load(LoadConfig({str(tiny_model_dir)!r}))\n"
        "core = build_core(loaded, SchedulerConfig())\n"
        "PromptEncoder(loaded.tokenizer, 400).encode_chat([{'role': 'user', 'content': 'hi'}])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
