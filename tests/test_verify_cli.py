"""`finr1 verify FILE.jsonl [--out OUT.jsonl]`, run as a real subprocess."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ROWS = [
    {"gold": "0.2", "prediction": r"<think>0.2 = 20%</think>\boxed{20\%}"},
    {"gold": "B、煤炭", "prediction": "B", "answer_type": "mcq_single", "id": "keep-me"},
    {"gold": '["D"; "E"]', "prediction": r"\boxed{D}"},
    {"gold": "Bearish", "prediction": "neutral"},
    {"gold": "", "prediction": r"\boxed{1}"},
    {"gold": "1.5亿元", "prediction": "1.5亿", "question": "营业收入是多少？"},
    {"gold": 42, "prediction": None},
    {"gold": "供给减少导致价格上涨", "prediction": "价格上涨"},
]
EXPECTED = ["correct", "correct", "incorrect", "incorrect", "unknown", "correct", "incorrect", "unknown"]


def finr1(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=120)


def write_jsonl(path, rows, extra_lines=()):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "".join(extra_lines), encoding="utf-8")


def test_verify_to_file_and_stdout(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, ROWS, ["\n"])  # a blank line is skipped
    r = finr1("verify", str(src), "--out", str(out))
    assert r.returncode == 0, r.stderr
    got = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()]
    assert [g["verdict"] for g in got] == EXPECTED
    for inp, g in zip(ROWS, got):
        assert {k: g[k] for k in inp} == inp  # the input row is kept as is
        assert "extracted" in g
    assert got[0]["extracted"] == r"20\%" and got[1]["extracted"] == "B" and got[1]["id"] == "keep-me"
    assert "verified 8 rows: correct 3, incorrect 3, unknown 2" in r.stderr
    r2 = finr1("verify", str(src))
    assert r2.returncode == 0 and [json.loads(l)["verdict"] for l in r2.stdout.splitlines()] == EXPECTED


def test_bad_line_fails_with_line_number_and_writes_nothing(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, ROWS[:2], ['{"gold": "B", "prediction": \n'])
    r = finr1("verify", str(src), "--out", str(out))
    assert r.returncode == 2
    assert f"{src}:3: not valid JSON" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
    write_jsonl(src, [{"gold": "B"}])
    r = finr1("verify", str(src))
    assert r.returncode == 2 and ":1: missing field(s): prediction" in r.stderr
    write_jsonl(src, [{"gold": "B", "prediction": "B", "answer_type": "multiple"}])
    assert "answer_type 'multiple' is not one of" in finr1("verify", str(src)).stderr
    assert "cannot read" in finr1("verify", str(tmp_path / "nope.jsonl")).stderr


def test_skip_bad_passes_bad_lines_through(tmp_path):
    src = tmp_path / "in.jsonl"
    write_jsonl(src, ROWS[:1], ["not json\n", '{"gold": "B"}\n'])
    r = finr1("verify", str(src), "--skip-bad")
    assert r.returncode == 0, r.stderr
    got = [json.loads(l) for l in r.stdout.splitlines()]
    assert got[0]["verdict"] == "correct"
    assert got[1] == {"input": "not json", "line": 2, "error": got[1]["error"], "verdict": "unknown", "extracted": None}
    assert "not valid JSON" in got[1]["error"]
    assert got[2]["gold"] == "B" and got[2]["verdict"] == "unknown" and "missing" in got[2]["error"]
