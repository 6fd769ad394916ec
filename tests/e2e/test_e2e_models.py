"""Many models in one real server: the default model plus a models folder of random Llamas, selected by
name with the official `openai` client; loads on demand, unloads by keep-alive (the server's and a
request's), by the bound and by hand; memory returns after an unload; other streams flow during a load."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import build_tiny_model
from tests.e2e.default_model import FRANCE, NO_EOS
from tests.e2e.health import metric_value

pytestmark = pytest.mark.e2e

KEEP_ALIVE_S = 3


def build_mid_model(folder: Path) -> Path:
    """A random Llama of ~110 MB of fp32 weights: a load takes long enough to stream beside it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    build_tiny_model(folder, seed=3)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4)
    LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models_server(start_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    build_tiny_model(folder / "tiny-a", seed=1)
    build_tiny_model(folder / "tiny-b", seed=2)
    build_mid_model(folder / "mid")
    server = start_server(TOKENWIRE_MODELS_DIR=str(folder), TOKENWIRE_MAX_LOADED_MODELS="3",
                          TOKENWIRE_MODEL_KEEP_ALIVE=f"{KEEP_ALIVE_S}s")
    yield server
    server.stop()


@pytest.fixture
def client(models_server):
    return openai.OpenAI(base_url=f"{models_server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def statuses(server) -> dict[str, str]:
    return {m["id"]: m["status"] for m in httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]}


def unload_all_but_default(server) -> None:
    for name in ("tiny-a", "tiny-b", "mid"):
        httpx.post(f"{server.url}/models/unload", json={"model": name}, timeout=30).raise_for_status()


def wait_for_status(server, name: str, status: str, timeout_s: float) -> float:
    started = time.monotonic()
    while statuses(server)[name] != status:
        assert time.monotonic() - started < timeout_s, statuses(server)
        time.sleep(0.1)
    return time.monotonic() - started


def rss_mib(server) -> float:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_the_official_client_lists_the_models_and_picks_one_by_name(client, models_server):
    unload_all_but_default(models_server)
    listed = {model.id: model.model_extra["status"] for model in client.models.list()}
    assert listed == {models_server.model: "loaded", "mid": "unloaded", "tiny-a": "unloaded", "tiny-b": "unloaded"}
    assert client.models.retrieve("tiny-a").model_extra["status"] == "unloaded"
    answer = client.chat.completions.create(model="tiny-a", messages=FRANCE, max_tokens=8, temperature=0)
    assert answer.model == "tiny-a" and answer.usage.completion_tokens > 0
    assert client.models.retrieve("tiny-a").model_extra["status"] == "loaded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=FRANCE, max_tokens=8)


def test_streams_of_different_models_run_side_by_side_and_answer_as_alone(client, models_server):
    def greedy(model: str) -> str:
        stream = client.completions.create(model=model, prompt="The lighthouse keeper said", max_tokens=32,
                                           temperature=0, logit_bias=NO_EOS if model == models_server.model else None,
                                           stream=True)
        return "".join(chunk.choices[0].text for chunk in stream if chunk.choices)

    models = [models_server.model, "tiny-a", "tiny-b"]
    alone = {model: greedy(model) for model in models}
    with ThreadPoolExecutor(len(models)) as pool:
        together = dict(zip(models, pool.map(greedy, models)))
    assert together == alone
    with httpx.Client(base_url=models_server.url, timeout=10) as http:
        for model in models:
            assert metric_value(http, "tokenwire_requests_total", endpoint="completions", model=model) >= 2


def test_keep_alive_unloads_by_the_servers_setting_and_by_the_request(client, models_server):
    unload_all_but_default(models_server)
    client.chat.completions.create(model="tiny-a", messages=FRANCE, max_tokens=4, extra_body={"keep_alive": 0})
    assert wait_for_status(models_server, "tiny-a", "unloaded", 5) < 2
    client.chat.completions.create(model="tiny-b", messages=FRANCE, max_tokens=4)
    waited = wait_for_status(models_server, "tiny-b", "unloaded", KEEP_ALIVE_S + 10)
    assert waited >= KEEP_ALIVE_S - 1.5  # not before its keep-alive (the status was read just after the answer)
    assert statuses(models_server)[models_server.model] == "loaded"  # the default model stays


def test_the_bound_unloads_the_least_recently_used_idle_model(client, models_server):
    unload_all_but_default(models_server)
    for model in ("tiny-a", "tiny-b"):
        client.completions.create(model=model, prompt="Hi", max_tokens=2)
    client.completions.create(model=models_server.model, prompt="Hi", max_tokens=2)  # tiny-a is now the oldest
    httpx.post(f"{models_server.url}/models/load", json={"model": "mid"}, timeout=60).raise_for_status()
    assert statuses(models_server) == {models_server.model: "loaded", "mid": "loaded", "tiny-a": "unloaded",
                                       "tiny-b": "loaded"}


def test_an_unloaded_models_memory_goes_back(models_server):
    unload_all_but_default(models_server)
    time.sleep(0.5)
    before = rss_mib(models_server)
    figures = []
    for _ in range(2):
        httpx.post(f"{models_server.url}/models/load", json={"model": "mid"}, timeout=60).raise_for_status()
        loaded = rss_mib(models_server)
        httpx.post(f"{models_server.url}/models/unload", json={"model": "mid"}, timeout=60).raise_for_status()
        figures.append((loaded, rss_mib(models_server)))
    assert all(loaded - before > 80 for loaded, _ in figures), (before, figures)  # the load was visible
    assert all(after <= before * 1.10 for _, after in figures), (before, figures)


def test_a_request_for_a_loaded_model_does_not_wait_for_another_models_load(models_server):
    """While `mid` loads, the default model's running stream keeps flowing and a new request to it
    gets its first token long before the load is over."""
    unload_all_but_default(models_server)
    url, default = models_server.url, models_server.model
    token_times: list[float] = []
    streaming = threading.Event()

    def long_stream() -> None:
        body = {"model": default, "prompt": "Once upon a time", "max_tokens": 400, "temperature": 0,
                "logit_bias": NO_EOS, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
            last = None
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    now = time.monotonic()
                    if last is not None:
                        token_times.append(now)
                    last = now
                    streaming.set()

    runner = threading.Thread(target=long_stream)
    runner.start()
    assert streaming.wait(30)
    time.sleep(0.3)
    load_started = time.monotonic()
    loader = threading.Thread(target=lambda: httpx.post(f"{url}/models/load", json={"model": "mid"}, timeout=60))
    loader.start()
    time.sleep(0.05)
    sent = time.monotonic()
    with httpx.stream("POST", f"{url}/v1/completions", timeout=60, json={
            "model": default, "prompt": "Hello", "max_tokens": 2, "stream": True}) as response:
        first_token = next(time.monotonic() for line in response.iter_lines() if line.startswith("data: {"))
    still_loading = statuses(models_server)["mid"] == "loading"
    loader.join()
    load_ended = time.monotonic()
    runner.join()
    assert still_loading or first_token - sent < (load_ended - load_started) / 2, (first_token - sent)
    during = [t for t in token_times if load_started <= t <= load_ended]
    assert len(during) >= 5, "the running stream kept producing tokens during the load"
