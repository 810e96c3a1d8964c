"""The pipeline's eval path for real: two local checkpoints served by finr1 (transformers serve)
and one external endpoint (the project's fake OpenAI server), on held-out records."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from finr1_core.config import embedded_model_dir, load_config
from finr1_core.eval.from_config import eval_from_config
from finr1_core.sources import load_source
from tests.fake_openai import FakeOpenAIProcess

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.heavy  # about 8 minutes on this 2-core CPU; the e2e flow test evaluates three served checkpoints in CI
def test_two_served_checkpoints_and_an_external_endpoint(tmp_path):
    model = str(embedded_model_dir())
    second = tmp_path / "sft-checkpoint"
    second.symlink_to(model, target_is_directory=True)  # a second checkpoint directory (same weights)
    heldout = load_source("tfns", path=str(REPO / "data/samples/tfns")).records[:2]
    with FakeOpenAIProcess(seed=9) as ext:
        cfg = load_config(REPO / "configs/embedded.yaml", {"eval.server": "transformers", "eval.max_tokens": 12, "eval.use_judge": False, "eval.max_concurrency": 2,
                                                          "eval.models": [{"name": "ext", "base_url": ext.url, "model": "fake-teacher"}]})
        served = []
        res = eval_from_config(cfg, {"base": model, "sft": str(second)}, heldout, str(tmp_path / "eval"),
                               on_progress=lambda p: served.append(p["model"]))
        assert ext.stats()["requests"] == 2 and {r["model"] for r in ext.requests()} == {"fake-teacher"}
    assert res.evaluated == 6 and served.count("base") == served.count("sft") == served.count("ext") == 2
    rows = res.rows
    assert len(rows) == 6 and not [r for r in rows if r["scored_by"] == "error"], [r["error"] for r in rows if r["error"]]
    local = [r for r in rows if r["model"] in ("base", "sft")]
    assert all(r["output"].startswith("<think>\n") and r["completion_tokens"] > 0 for r in local)
    # the same weights under another directory name: the cache identity follows the resolved path
    assert {r["target"] for r in local} == {f"local:{Path(model).resolve()}|completions"}
    t = res.table
    assert list(t["models"]) == ["base", "sft", "ext"] and t["columns"] == ["TFNS"]
    assert t["models"]["base"]["TFNS"]["n"] == 2 and t["models"]["ext"]["TFNS"]["n"] == 2
    assert len(pq.read_table(res.uris["rows"])) == 6
    assert "| base |" in res.markdown and "| sft |" in res.markdown and "| ext |" in res.markdown
