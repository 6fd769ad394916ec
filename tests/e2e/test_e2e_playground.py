"""The playground in a real browser: headless Chromium (Debian's package) driven by Playwright.

Against the real server and default model: the page loads, a message's answer streams in (several
renders before it ends), a long answer stops mid-way and the server counts it cancelled, and the
console stays clean. Against the app with a scripted fake engine: model output full of HTML runs
nothing. A screenshot is kept in test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import uvicorn

from app.config import Settings
from app.engine.errors import Overloaded
from app.engine.types import FinishReason
from app.main import create_app
from app.engine.models.model_catalog import ModelCatalog
from app.engine.model_pool import ModelPool, PoolConfig
from tests.api.fake_engine import FakeEngine, scripted_events
from tests.api.fake_models import Factory, default_config, models_folder
from tests.e2e.health import metric_value, wait_for_metric

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("needs Debian's chromium (apt-get install chromium; .ci/run installs it)", allow_module_level=True)

from playwright.sync_api import Page, sync_playwright  # noqa: E402 - only once chromium is known to exist

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
HOSTILE = ["Here: <script>window.__pwned = 1</script>", " <img src=x onerror=\"window.__pwned = 2\">",
           "\n\n```html\n<b onmouseover=\"window.__pwned = 3\">bold</b>\n```\n", "and **real** bold."]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser) -> Iterator[tuple[Page, list[str]]]:
    # Playwright's polling evaluates strings, which the page's CSP forbids; bypassing it here also makes
    # the HTML test stricter: the renderer alone must keep model output inert.
    context = browser.new_context(viewport={"width": 1200, "height": 800}, bypass_csp=True)
    opened = context.new_page()
    problems: list[str] = []
    opened.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    opened.on("pageerror", lambda error: problems.append(str(error)))
    yield opened, problems
    context.close()


def _send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.click("#send")


def _answer_lengths(page: Page) -> None:
    """Record the last answer's text length at every DOM change into window.__lengths."""
    page.evaluate("""() => {
        window.__lengths = [];
        new MutationObserver(() => {
            const answers = document.querySelectorAll('.message.assistant .body');
            if (answers.length) window.__lengths.push(answers[answers.length - 1].textContent.length);
        }).observe(document.getElementById('chat'), {childList: true, subtree: true, characterData: true});
    }""")


def test_a_message_streams_in_and_a_second_turn_follows(page, server):
    view, problems = page
    view.goto(server.url + "/")
    view.wait_for_function("document.getElementById('model').textContent.includes('context')")
    view.fill("#temperature", "0")
    view.fill("#max-tokens", "40")
    _answer_lengths(view)
    _send(view, "What is the capital of France?")
    view.wait_for_selector(".message.assistant .meta:not(:empty)", timeout=60_000)
    lengths = [n for n in view.evaluate("window.__lengths") if n]
    assert len(set(lengths)) >= 3, f"the answer arrived in one piece: {lengths}"
    meta = view.text_content(".message.assistant .meta")
    assert "first token" in meta and "finish:" in meta and "prompt" in meta and "completion" in meta
    _send(view, "And of Italy?")
    view.wait_for_function("document.querySelectorAll('.message.assistant .meta:not(:empty)').length === 2",
                           timeout=60_000)
    assert view.locator(".message.user").count() == 2 and view.locator(".message.error").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    view.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    assert problems == []


CANCELLED = {"endpoint": "chat_completions", "outcome": "cancelled"}


def test_stop_aborts_the_request_on_the_server(page, server, http):
    view, problems = page
    cancelled = metric_value(http, "tokenwire_requests_total", **CANCELLED)
    view.goto(server.url + "/")
    view.fill("#max-tokens", "600")
    view.fill("#temperature", "0.8")
    view.fill("#seed", "3")
    _send(view, "Write a very long story about a lighthouse keeper and the sea, in many chapters.")
    view.wait_for_function("(document.querySelector('.message.assistant .body') || {}).textContent?.length > 20",
                           timeout=60_000)
    view.click("#stop")
    view.wait_for_function("document.querySelector('.message.assistant .meta').textContent.includes('stopped')")
    assert not view.is_disabled("#send") and view.is_disabled("#stop")
    assert wait_for_metric(http, "tokenwire_requests_total", cancelled + 1, 10, **CANCELLED) == cancelled + 1
    assert problems == []


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[str, FakeEngine]]:
    yield from _serve_fake(Settings(_env_file=None))


@pytest.fixture(scope="module")
def keyed_fake_server() -> Iterator[tuple[str, FakeEngine]]:
    yield from _serve_fake(Settings(_env_file=None, api_keys="sk-play"))


@pytest.fixture(scope="module")
def limited_fake_server() -> Iterator[tuple[str, FakeEngine]]:
    yield from _serve_fake(Settings(_env_file=None, api_keys="sk-demo name=demo requests=1/min"))


@pytest.fixture(scope="module")
def thinking_fake_server() -> Iterator[tuple[str, FakeEngine]]:
    """A fake reasoning model: its tokenizer has <think> markers, its answer thinks first."""
    script = scripted_events(["<think>", "Two plus two", " is four.", "</think>", "It is **4**."], FinishReason.STOP)
    yield from _serve_fake(Settings(_env_file=None), script, reasoning_markers=("<think>", "</think>"))


@pytest.fixture(scope="module")
def models_fake_server(tmp_path_factory) -> Iterator[tuple[str, Factory]]:
    """The real app over a pool of fake engines: a default model and a models folder (alpha, beta, ...)."""
    root = tmp_path_factory.mktemp("playground-models")
    factory = Factory()
    models = ModelPool(ModelCatalog(default_config(root), str(models_folder(root / "models"))), PoolConfig(), factory)
    yield from _serve(create_app(Settings(_env_file=None), models=models), factory)


def _serve_fake(settings: Settings, script=None, reasoning_markers=None) -> Iterator[tuple[str, FakeEngine]]:
    """The real app over a scripted engine, served by uvicorn on a free loopback port in this process."""
    engine = FakeEngine(script=script or scripted_events(HOSTILE, FinishReason.STOP), event_delay_s=0.05)
    engine.info_on_start = replace(engine.info_on_start, reasoning_markers=reasoning_markers)
    yield from _serve(create_app(settings, engine=engine), engine)  # type: ignore[arg-type]


def _serve(app, handle):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the fake server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", handle
    server.should_exit = True
    thread.join(10)


def test_the_model_picker_lists_every_model_and_the_message_goes_to_the_chosen_one(page, models_fake_server):
    view, problems = page
    url, factory = models_fake_server
    view.goto(url + "/")
    view.wait_for_function("document.getElementById('model').textContent.includes('context')")
    picker = view.locator("#model-picker")
    assert picker.is_visible()
    assert picker.locator("option").all_text_contents() == [
        "default", "alpha (unloaded)", "beta (unloaded)", "delta (unloaded)", "gamma (unloaded)"]
    picker.select_option("beta")
    assert "unloaded" in view.locator("#model").text_content()
    _send(view, "hello beta")
    view.wait_for_selector(".message.assistant .meta:not(:empty)")
    view.wait_for_function("document.getElementById('model').textContent.includes('context')")
    assert picker.locator("option").all_text_contents()[2] == "beta"  # loaded by the message
    beta = [engine for name, engine in factory.built if name == "beta"]
    assert len(beta) == 1 and beta[0].calls, "the message reached beta's engine"
    assert problems == []


def test_model_output_is_never_run_as_html(page, fake_server):
    view, problems = page
    url, _ = fake_server
    view.goto(url + "/")
    _send(view, "show me some html")
    view.wait_for_selector(".message.assistant .meta:not(:empty)")
    answer = view.locator(".message.assistant .body")
    assert view.evaluate("window.__pwned") is None
    assert answer.locator("script, img, b").count() == 0
    text = answer.text_content()
    assert "<script>window.__pwned = 1</script>" in text and "onerror" in text
    assert answer.locator("pre code").text_content() == '<b onmouseover="window.__pwned = 3">bold</b>'
    assert answer.locator("strong").text_content() == "real"
    assert problems == []


def test_a_reasoning_models_thinking_is_shown_apart_and_folded(page, thinking_fake_server):
    view, problems = page
    url, _ = thinking_fake_server
    view.goto(url + "/")
    _send(view, "2+2?")
    view.wait_for_selector(".message.assistant .meta:not(:empty)")
    thinking = view.locator(".message.assistant details.thinking")
    assert thinking.is_visible() and thinking.get_attribute("open") is None  # folded until clicked
    assert thinking.text_content() == "ThinkingTwo plus two is four."
    body = view.locator(".message.assistant .body")
    assert body.text_content() == "It is 4." and body.locator("strong").text_content() == "4"
    assert problems == []


def test_errors_read_as_sentences(page, fake_server):
    view, problems = page
    url, engine = fake_server
    engine.generate_error = Overloaded("busy")
    try:
        view.goto(url + "/")
        _send(view, "hello")
        view.wait_for_selector(".message.error")
        assert "retry" in view.text_content(".message.error .meta").lower()
    finally:
        engine.generate_error = None
    # The 429 itself is a console error in Chromium ("Failed to load resource"); nothing else may be.
    assert all("429" in problem for problem in problems), problems


def test_with_keys_the_page_asks_for_one_and_then_works(page, keyed_fake_server):
    view, problems = page
    url, _ = keyed_fake_server
    view.goto(url + "/")
    view.wait_for_function("document.getElementById('model').textContent.includes('API key')")
    view.fill("#api-key", "sk-play")
    view.dispatch_event("#api-key", "change")
    view.wait_for_function("document.getElementById('model').textContent.includes('context')")
    _send(view, "hello")
    view.wait_for_selector(".message.assistant .meta:not(:empty)")
    assert view.locator(".message.error").count() == 0
    assert view.evaluate("sessionStorage.getItem('tokenwire-api-key')") == "sk-play"
    assert view.evaluate("localStorage.getItem('tokenwire-api-key')") is None  # not asked to remember
    assert all("401" in problem for problem in problems), problems  # the first /v1/models, before the key


def test_a_keys_limits_are_shown_and_its_refusal_reads_as_a_sentence(page, limited_fake_server):
    view, problems = page
    url, _ = limited_fake_server
    view.goto(url + "/")
    view.fill("#api-key", "sk-demo")
    view.dispatch_event("#api-key", "change")
    view.wait_for_function("document.getElementById('model').textContent.includes('context')")
    _send(view, "hello")
    view.wait_for_selector(".message.assistant .meta:not(:empty)")
    assert "0 of 1 requests left" in view.text_content("#limits")
    _send(view, "again")
    view.wait_for_selector(".message.error")
    refusal = view.text_content(".message.error .meta")
    assert "limit" in refusal and "retry in" in refusal and "demo" in refusal
    # Console errors: the first /v1/models (before the key) and the refused request; nothing else.
    assert all("401" in problem or "429" in problem for problem in problems), problems
