"""`python -m app` with a default model batched decoding cannot serve: one error line naming the config
field and its value, exit code 3, no traceback, and no weight read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import DEFAULT_MODEL_DIR, REPO_ROOT, free_port


def test_a_refused_default_model_exits_at_once_with_one_line(tmp_path: Path):
    folder = tmp_path / "chunked-llama"
    folder.mkdir()
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    config.update(attention_chunk_size=512)  # chunked attention (Llama 4's): sliding windows are served
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"never read")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
    env.update(TOKENWIRE_MODEL=str(folder), TOKENWIRE_HOST="127.0.0.1", TOKENWIRE_PORT=str(free_port()))
    result = subprocess.run([sys.executable, "-m", "app"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "attention_chunk_size" in line]
    assert len(lines) == 1, output
    assert "attention_chunk_size=512 (chunked attention)" in lines[0]
    assert "ERROR" in lines[0], output
