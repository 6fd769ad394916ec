"""bench.families end to end for one family (llama, on the native kernels) with few tokens: the row's
fields and the table line; a family this transformers lacks is reported, not raised."""

from __future__ import annotations

import json

from bench import families
from bench.families import FAMILIES, build_family, main


def test_one_family_row_and_table(tmp_path, capsys):
    out = tmp_path / "rows.json"
    main(["--families", "llama", "--tokens", "4", "--start-runs", "1", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["family"] == "llama" and row["model_type"] == "llama" and row["starts"] is True
    assert row["forward"].startswith("native"), row["forward"]
    exact = row["exact"]
    assert exact["batched_equals_alone"] and exact["cache_hit_equals_first"] and exact["drafts_equal_alone"]
    assert exact["cache_hits"] == 1 and exact["cache_reused_tokens"] > 64 and exact["exact"] is True
    assert row["speed"]["tokens"] == 4 and row["speed"]["decode_tok_s_1"] > 0 and row["speed"]["agg_tok_s_8"] > 0
    assert 0 < row["start"]["load_s"] < row["start"]["ready_s"]
    table = capsys.readouterr().out
    assert "| llama | yes | native" in table and "| yes | yes | yes |" in table


def test_a_missing_config_class_is_reported(tmp_path, monkeypatch):
    monkeypatch.setitem(FAMILIES, "nothing", ("NoSuchConfig", {}))
    reason = build_family(tmp_path / "m", tmp_path, "nothing")
    assert reason.startswith("not in this transformers") and "NoSuchConfig" in reason
    assert "| x | no: refused: why |" in families.table([{"family": "x", "starts": False, "reason": "refused: why"}])
