"""A real `python -m app` process on 127.0.0.1 with the real default model, shared by the e2e tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "SmolLM2-135M-Instruct"
STARTUP_TIMEOUT_S = 120
SHUTDOWN_TIMEOUT_S = 20
PASSED_THROUGH = ("TOKENWIRE_DTYPE", "TOKENWIRE_DEVICE", "TOKENWIRE_NATIVE_ISA")


@dataclass(frozen=True)
class Server:
    url: str
    model: str
    max_model_len: int
    log_path: Path
    process: subprocess.Popen | None = field(default=None, compare=False, repr=False)

    def stop(self) -> None:
        """Stop this server now (SIGTERM, then kill); later calls do nothing."""
        if self.process is not None:
            stop(self.process)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode} during start-up:\n"
                        f"{log_path.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("status") == "ok":
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)
    pytest.fail(f"the server was not healthy within {STARTUP_TIMEOUT_S}s:\n{log_path.read_text(errors='replace')[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _launch(log_dir: Path, env_overrides: dict[str, str]) -> tuple[Server, subprocess.Popen]:
    """Start `python -m app` on a free loopback port and wait until it is healthy."""
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.fail(f"the default model is missing in {DEFAULT_MODEL_DIR}; run `make model` first")
    port = free_port()
    # Hermetic: only our settings, whatever TOKENWIRE_* the calling shell has (or .env, which env vars beat),
    # except the hardware choices, so `TOKENWIRE_DTYPE=bfloat16 make test` runs the e2e servers in bf16.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_") or k in PASSED_THROUGH}
    env.update(TOKENWIRE_HOST="127.0.0.1", TOKENWIRE_PORT=str(port), TOKENWIRE_LOG_LEVEL="info",
               PYTHONUNBUFFERED="1", TOKENWIRE_STORE_URL=f"sqlite:///{log_dir}/store.sqlite3",
               # Many tests leave a stream early: its generation ends a second later, not after the
               # default 15 s that lets a real client come back (test_e2e_resume.py runs the default).
               TOKENWIRE_STREAM_UNATTENDED="1s")
    env.update(env_overrides)
    log_path = log_dir / "server.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(url, process, log_path)
        headers = _auth_headers(env_overrides)
        model = httpx.get(f"{url}/v1/models", headers=headers, timeout=10).json()["data"][0]
    except BaseException:
        stop(process)
        raise
    return Server(url, model["id"], model["max_model_len"], log_path, process), process


def _auth_headers(env: dict[str, str]) -> dict[str, str]:
    """A server started with API keys is queried with its first key."""
    keys = [entry.split()[0] for entry in env.get("TOKENWIRE_API_KEYS", "").split(",") if entry.strip()]
    return {"Authorization": f"Bearer {keys[0]}"} if keys else {}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started, process = _launch(tmp_path_factory.mktemp("e2e-server"), {})
    try:
        yield started
    finally:
        stop(process)


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """Factory for extra servers with their own settings: `start_server(TOKENWIRE_MAX_RUNNING="2")`.

    Call it from a module-scoped fixture so each configuration starts once, and `server.stop()` it at
    the module's end (only one torch process should compete for the CPU); any still running are
    stopped when the session ends.
    """
    processes: list[subprocess.Popen] = []

    def start(**env: str) -> Server:
        started, process = _launch(tmp_path_factory.mktemp("e2e-server-custom"), {k: str(v) for k, v in env.items()})
        processes.append(process)
        return started

    try:
        yield start
    finally:
        for process in processes:
            stop(process)


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(60, connect=10)) as client:
        yield client


@pytest.fixture
def openai_client(server: Server):
    import openai

    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client
