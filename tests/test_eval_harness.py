"""The general benchmarks (MATH-500, AIME 2024, CEval, IFEval) through lm-evaluation-harness 0.4.13:
local hub-layout files (tests/data/hub), a real HTTP server scripted per prompt (right for some rows,
wrong for others, one HTTP 500), lm-eval's own scorers, the shared per-row cache and table."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from finr1_core.eval import EvalError, EvalSettings, run_eval
from finr1_core.llm import Sampling
from tests.judge_server import JudgeServer

REPO = Path(__file__).resolve().parent.parent
HUB = REPO / "tests/data/hub"
DATA = {"math500": str(HUB / "HuggingFaceH4/MATH-500"), "aime24": str(HUB / "Maxwell-Jia/AIME_2024"),
        "ceval": str(HUB / "ceval/ceval-exam"), "ifeval": str(HUB / "google/IFEval")}


def _settings(**kw) -> EvalSettings:
    base = dict(sampling=Sampling(0.0, 1.0, 256), samples=2, max_retries=0, max_concurrency=2, timeout_s=30, flush_every=4)
    base.update(kw)
    return EvalSettings(**base)


class Script:
    """Replies by what the prompt is about; AIME's second sample (seed 1235) is sometimes wrong."""

    def __init__(self):
        self.srv: JudgeServer | None = None
        self.fail_divisors = True

    def __call__(self, prompt: str, n: int):
        body = self.srv.requests[n]["body"]
        seed = body.get("seed")
        # MATH-500 (minerva prompt "Problem: ... Solution:"): two right, one wrong, one HTTP 500
        if "polar coordinates" in prompt:
            return "<think>\nr = 3, theta = pi/2\n</think>\n\nThe answer is $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$."
        if "in terms of $p$ and $q" in prompt:
            return "We get $\\boxed{p + q}$."
        if "f(-2) +f(-1)+f(0)" in prompt:
            return "Adding up: $\\boxed{\\frac{14}{3}}$"
        if "divisors does 196" in prompt:
            return (500, "injected server error") if self.fail_divisors else "196 has $\\boxed{9}$ divisors."
        # AIME 2024: Aya right then wrong, the logs right twice, xy wrong twice
        if "Aya goes for a" in prompt:
            return "\\boxed{204}" if seed == 1234 else "\\boxed{200}"
        if "log_2(x^4y^3z^2)" in prompt:
            return "So $m+n = \\boxed{33}$."
        if "Find $xy$" in prompt:
            return "\\boxed{24}"
        # CEval: accountant 0 right, accountant 1 wrong, biology right (\boxed form)
        if "增量预算方式进行战略控制" in prompt:
            return "乙公司是新设立的子公司，没有历史数据。\n答案：B"
        if "会计基本假设" in prompt:
            return "答案：C"
        if "氨基酸" in prompt:
            return "所以选 \\boxed{C}"
        # IFEval: no comma (kept), lowercase (broken), end phrase (kept), letters/sentences/highlights (kept)
        if "Shakespearean" in prompt:
            return "Hark the first day in Tokyo shall be spent in wonder. Then Kyoto calls with temples old."
        if "all lowercase letters" in prompt:
            return "What Are The Boys Playing With?"
        if "Is there anything else I can help with?" in prompt:
            return "The sentiment is negative. Is there anything else I can help with?"
        if "weather forecast" in prompt:
            return "*city name* then *sky details*. Hi!"
        return "unscripted prompt"


def test_general_benchmarks_through_lm_eval(tmp_path):
    script = Script()
    out = str(tmp_path / "out")
    seen = []
    with JudgeServer(script, models=("fake-chat",)) as srv:
        script.srv = srv
        model = [f"ext={srv.base_url}#fake-chat"]
        res = run_eval(model, "math500,aime24,ceval,ifeval", DATA, None, out, settings=_settings(samples=1), on_progress=seen.append)
        # AIME's Pass@1 over k samples: a second run with --samples 2 adds only the second sample of each row
        res2 = run_eval(model, "aime24", DATA, None, out, settings=_settings(samples=2))
        n_before = len(srv.requests)

        rows = {(r["benchmark"], r["row_id"], r["sample"]): r for r in res.rows}
        assert len(res.rows) == 4 + 3 + 3 + 4 and res.evaluated == 14
        assert seen[-1]["done"] == 14 and seen[-1]["failed"] == 1 and seen[-1]["total"] == 14
        m = res.table["models"]["ext"]
        assert res.table["columns"] == ["MATH-500", "AIME 2024", "CEval", "IFEval"]
        assert (m["MATH-500"]["n"], m["MATH-500"]["correct"], m["MATH-500"]["failed"]) == (4, 2, 1)
        assert (m["AIME 2024"]["n"], m["AIME 2024"]["correct"]) == (3, 2)
        assert (m["CEval"]["n"], m["CEval"]["correct"]) == (3, 2)
        assert (m["IFEval"]["n"], m["IFEval"]["correct"]) == (4, 3)
        assert m["failed"] == 1

        verdicts = {k[:2]: (r["correct"], r["scored_by"]) for k, r in rows.items()}
        assert verdicts == {
            ("math500", "test/precalculus/807.json"): (True, "harness"),
            ("math500", "test/intermediate_algebra/1994.json"): (False, "harness"),
            ("math500", "test/algebra/2584.json"): (True, "harness"),
            ("math500", "test/number_theory/572.json"): (False, "error"),
            ("aime24", "2024-I-1"): (True, "harness"), ("aime24", "2024-II-4"): (True, "harness"), ("aime24", "2024-I-2"): (False, "harness"),
            ("ceval", "accountant/0"): (True, "harness"), ("ceval", "accountant/1"): (False, "harness"),
            ("ceval", "high_school_biology/0"): (True, "harness"),
            ("ifeval", "1001"): (True, "harness"), ("ifeval", "1019"): (False, "harness"),
            ("ifeval", "1128"): (True, "harness"), ("ifeval", "1174"): (True, "harness"),
        }
        failed = rows[("math500", "test/number_theory/572.json", 0)]
        assert "500" in failed["error"] and failed["verdict"] == "incorrect" and failed["output"] == ""
        polar = rows[("math500", "test/precalculus/807.json", 0)]
        assert polar["harness_task"] == "minerva_math500" and json.loads(polar["harness_metrics"])["math_verify"] == 1
        assert polar["output"].startswith("The answer is")  # the think block is not scored (think_end_token)
        assert rows[("ceval", "accountant/1", 0)]["extracted"] == "C" and rows[("ceval", "accountant/1", 0)]["gold"] == "B"
        assert rows[("ceval", "accountant/0", 0)]["harness_task"] == "ceval-valid-gen_accountant"
        lower = json.loads(rows[("ifeval", "1019", 0)]["harness_metrics"])
        assert lower["prompt_level_strict_acc"] is False and lower["inst_level_strict_acc"] == [False]
        sent = json.loads(rows[("ifeval", "1174", 0)]["harness_metrics"])  # punkt_tab sentence count, offline
        assert sent["inst_level_strict_acc"] == [True, True, True]
        assert rows[("aime24", "2024-I-1", 0)]["harness_task"] == "aime24"

        # requests: bounded by the settings, AIME at T=0.6 with seed + k, the others greedy
        bodies = [r["body"] for r in srv.requests]
        aime = [b for b in bodies if "Aya goes" in json.dumps(b)]
        assert [(b["temperature"], b["top_p"], b["seed"]) for b in aime] == [(0.6, 0.95, 1234), (0.6, 0.95, 1235)]
        assert all(b["max_tokens"] == 256 for b in bodies)
        # IFEval and CEval stop on nothing: no empty "stop" list (transformers serve answers it with a 500)
        assert all(b.get("stop") != [] for b in bodies) and any("stop" not in b for b in bodies)
        assert {b["temperature"] for b in bodies if "Aya goes" not in json.dumps(b) and "Find $xy$" not in json.dumps(b) and "x^4y^3z^2" not in json.dumps(b)} == {0.0}

        a2 = res2.table["models"]["ext"]["AIME 2024"]
        assert res2.evaluated == 3 and a2["n"] == 3 and a2["correct"] == pytest.approx(0.5 + 1 + 0)  # Aya: 1 of 2 samples
        assert sorted((r["row_id"], r["sample"]) for r in res2.rows)[:2] == [("2024-I-1", 0), ("2024-I-1", 1)]

        # resume: only the failed row is asked again, then nothing
        script.fail_divisors = False
        res3 = run_eval(model, "math500,aime24,ceval,ifeval", DATA, None, out, settings=_settings(samples=1))
        assert res3.evaluated == 1 and len(srv.requests) == n_before + 1
        m3 = res3.table["models"]["ext"]
        assert (m3["MATH-500"]["correct"], m3["MATH-500"]["failed"], m3["failed"]) == (3, 0, 0)
        res4 = run_eval(model, "math500,aime24,ceval,ifeval", DATA, 2, out, settings=_settings(samples=1))
        assert res4.evaluated == 0 and len(srv.requests) == n_before + 1
        assert {c: res4.table["models"]["ext"][c]["n"] for c in res4.table["columns"]} == {"MATH-500": 2, "AIME 2024": 2, "CEval": 2, "IFEval": 2}

    on_disk = pq.read_table(res4.uris["rows"]).to_pylist()  # the last run's rows (--limit 2)
    assert len(on_disk) == 8 and {"harness_task", "harness_metrics", "scored_by", "extracted"} <= set(on_disk[0])
    assert "lm-evaluation-harness" in Path(res3.uris["markdown"]).read_text()


def test_ceval_reads_the_hub_parquet_layout_and_bad_data_fails_in_one_line(tmp_path):
    import pyarrow.csv as pacsv

    from finr1_core.eval.harness import resolve_data

    d = tmp_path / "ceval-exam" / "accountant"
    d.mkdir(parents=True)
    pq.write_table(pacsv.read_csv(HUB / "ceval/ceval-exam/val/accountant_val.csv"), d / "val-00000-of-00001.parquet")
    spec = resolve_data("ceval", str(tmp_path / "ceval-exam"))
    assert list(spec["subjects"]) == ["accountant"] and spec["subjects"]["accountant"]["format"] == "parquet"
    empty = tmp_path / "empty"
    empty.mkdir()
    for key, path, msg in [("math500", str(tmp_path / "nope"), "no such file or folder"),
                           ("ceval", str(HUB / "google/IFEval"), "no val split found"),
                           ("aime24", str(empty), "no .jsonl/.json/.parquet/.csv file")]:
        with pytest.raises(EvalError, match=msg) as e:
            run_eval(["a=http://127.0.0.1:9/v1#m"], key, {key: path}, 1, str(tmp_path / "o"))
        assert "\n" not in str(e.value)


def test_without_data_the_hub_is_named_in_one_line(tmp_path):
    """No --data: the task keeps its hub dataset; offline that is one line naming --data."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "flows.cli", "eval", "--model", "a=http://127.0.0.1:9/v1#m", "--benchmarks", "aime24",
                        "--out", str(tmp_path / "o")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    err = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "benchmark aime24: cannot load its data" in err[0] and "--data aime24=PATH" in err[0], p.stderr[-1500:]
    assert "Traceback" not in p.stderr and "OfflineModeIsEnabled" in err[0]


@pytest.mark.heavy  # a few minutes on this CPU: the embedded model served by transformers serve
def test_general_benchmarks_against_the_served_embedded_model(tmp_path):
    """The real server, not the scripted one: IFEval and CEval stop on nothing, and `transformers
    serve` answered lm-eval's `"stop": []` with a 500 until the model class dropped it."""
    from finr1_core.config import embedded_model_dir

    model = f"smollm2-135m={embedded_model_dir()}"
    res = run_eval([model], "ceval,ifeval,math500", DATA, 1, str(tmp_path / "out"),
                   settings=_settings(samples=1, sampling=Sampling(0.0, 1.0, 16), max_retries=1, timeout_s=300, max_concurrency=1))
    rows = res.rows
    assert len(rows) == 3 and {r["benchmark"] for r in rows} == {"ceval", "ifeval", "math500"}
    assert [r["error"] for r in rows if r["scored_by"] == "error"] == []  # every request answered
    assert all(r["scored_by"] == "harness" and r["output"] for r in rows)
    assert res.table["models"]["smollm2-135m"]["IFEval"]["n"] == 1
