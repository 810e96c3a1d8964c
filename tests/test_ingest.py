"""Ingest: every sample loads, gold answers parse, bad input is quarantined or fails in one line."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from finr1_core.config import SourceSpec
from finr1_core.ingest import IngestError, distribution_table, ingest, ingest_sources
from finr1_core.records import ANSWER_TYPES, MODULES, QUARANTINE_SCHEMA, RECORD_SCHEMA, records_to_table, table_to_records
from finr1_core.sources import SOURCES, load_source
from finr1_core.sources.parse import choice_answer, eval_program, parse_letters, to_decimal_str
from flows.cli import app

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "samples"
SAMPLE_SOURCES = sorted(p.name for p in SAMPLES.iterdir() if (p / "sample.jsonl").exists())

# Every quarantined sample row must have one of these (true) reasons; anything else is unexplained.
EXPECTED_QUARANTINE = {"cfbenchmark": {"no gold answer (answer is 'nan' in the source)": 2}}


def _lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


# --------------------------------------------------------------------------- every sample loads
@pytest.mark.parametrize("name", SAMPLE_SOURCES)
def test_every_sample_loads_with_no_unexplained_drops(name):
    assert name in SOURCES, f"sample dir {name} has no loader"
    path = SAMPLES / name / "sample.jsonl"
    n = len(_lines(path))
    res = load_source(name, str(path))
    assert res.rows_in == n == len(res.records) + len(res.quarantine)
    assert dict(Counter(q["reason"] for q in res.quarantine)) == EXPECTED_QUARANTINE.get(name, {})
    ids = [r["id"] for r in res.records]
    assert len(set(ids)) == len(ids)
    for r in res.records:
        assert r["repo_name"] == name and r["id"].startswith(name + "-")
        assert r["question"].strip() and r["answer"].strip()
        assert r["answer_type"] in ANSWER_TYPES and r["module"] in MODULES
        assert r["language"] == ("en" if name in ("finqa", "convfinqa", "convfinqa_conv", "tfns", "quant_trading_instruct") else "zh")
        assert r["answer_type"] in SOURCES[name].answer_types
        if r["choices"] is not None:
            assert set(r["answer"]) <= set(r["choices"]) or r["answer_type"] == "true_false"
    # the records fit the schema and round-trip through Arrow
    back = table_to_records(records_to_table(res.records))
    assert back[0]["meta"]["provenance"] == {"source_file": str(path), "row_index": 0}
    assert [b["choices"] for b in back] == [r["choices"] for r in res.records]


def test_meta_keeps_everything_else():
    res = load_source("finqa", str(SAMPLES / "finqa" / "sample.jsonl"), limit=1)
    meta = res.records[0]["meta"]
    raw = _lines(SAMPLES / "finqa" / "sample.jsonl")[0]
    assert meta["id"] == raw["id"] and meta["filename"] == raw["filename"]
    assert meta["qa"]["answer"] == raw["qa"]["answer"] and meta["qa"]["program"] == raw["qa"]["program"]
    assert meta["table_retrieved"] == raw["table_retrieved"]


# --------------------------------------------------------------------------- gold-answer parses
def _find(name: str, pred) -> dict:
    res = load_source(name, str(SAMPLES / name / "sample.jsonl"))
    hits = [r for r in res.records if pred(r)]
    assert hits, f"no {name} record matched"
    return hits[0]


GOLD = [
    # source, predicate on the record, expected answer, expected answer_type
    ("finqa", lambda r: r["meta"]["id"] == "VNO/2007/page_192.pdf-1", "true", "true_false"),
    ("finqa", lambda r: r["answer_raw"] == "10863.0", "10863", "numeric"),
    ("finqa", lambda r: r["answer_raw"] == "1.13216", "1.13216", "numeric"),
    ("finqa", lambda r: r["answer_raw"] == "36003776400000.0", "36003776400000", "numeric"),
    ("finqa", lambda r: r["answer_raw"] == "-0.09091", "-0.09091", "numeric"),
    ("convfinqa", lambda r: r["answer_raw"] == "11503.0", "11503", "numeric"),
    ("convfinqa", lambda r: r["answer_raw"] == "-0.0263", "-0.0263", "numeric"),
    ("convfinqa_conv", lambda r: r["answer_raw"] == "177.6", "177.6", "numeric"),
    ("convfinqa_conv", lambda r: r["answer_raw"] == "no", "false", "true_false"),
    ("convfinqa_conv", lambda r: r["answer_raw"] == "7301000000.0", "7301000000", "numeric"),
    ("tfns", lambda r: r["answer_raw"] == "0", "Bearish", "label"),
    ("tfns", lambda r: r["answer_raw"] == "1", "Bullish", "label"),
    ("tfns", lambda r: r["answer_raw"] == "2", "Neutral", "label"),
    ("fincuge", lambda r: r["meta"]["task"] == "finfe" and r["answer_raw"] == "0", "消极", "label"),
    ("fincuge", lambda r: r["meta"]["task"] == "finfe" and r["answer_raw"] == "2", "积极", "label"),
    ("fincuge", lambda r: r["meta"]["task"] == "finnl" and r["answer_raw"] == "中国 房地产", "中国 房地产", "label"),
    ("fincuge", lambda r: r["meta"]["task"] == "finre" and "乐购超市" in r["question"], "被拥有", "label"),
    ("fincuge", lambda r: r["meta"]["task"] == "finna" and "爱尔眼科创始人" in r["question"], "爱尔眼科：全面拥抱社会监督 将成立由总裁牵头的专门机构", "free_text"),
    ("fincuge", lambda r: r["meta"]["task"] == "finnsp" and r["meta"]["id"] == "3f9444a1", "普银币", "free_text"),
    ("fincuge", lambda r: r["meta"]["task"] == "finnsp" and r["meta"]["id"] == "e8161748", "无", "free_text"),
    ("fincuge", lambda r: r["meta"]["task"] == "finese" and "权健" in r["question"], "权健", "free_text"),
    ("financeiq", lambda r: "投资连结保险" in r["question"], "C", "mcq_single"),
    ("fineval", lambda r: "债务重组" in r["question"] and "332" in r["choices"].values(), "C", "mcq_single"),
    ("ant_finance", lambda r: r["answer_raw"] == "是", "true", "true_false"),
    ("ant_finance", lambda r: r["answer_raw"] == "否", "false", "true_false"),
    ("ant_finance", lambda r: "E" in (r["choices"] or {}) and r["answer_raw"] == "C", "C", "mcq_single"),
    ("ant_finance_finr1eval", lambda r: r["answer_raw"] == "是", "true", "true_false"),
    ("ant_finance_finr1eval", lambda r: "期内发生式" in r["question"], "A", "mcq_single"),
    ("fincorpus", lambda r: r["answer_raw"] == "B、煤炭" or r["answer_raw"] == "A、社会保障税", "A", "mcq_single"),
    ("fincorpus", lambda r: r["answer_raw"] == '["A"; "D"; "E"]', "ADE", "mcq_multi"),
    ("fincorpus", lambda r: r["answer_raw"] == "A B D", "ABD", "mcq_multi"),
    ("fincorpus", lambda r: r["answer_raw"] == "B、现金折扣百分比; C、折扣期; D、信用期", "BCD", "mcq_multi"),
    ("fincorpus", lambda r: r["answer_raw"] == "A、错", "false", "true_false"),
    ("fincorpus", lambda r: r["answer_raw"] == "B、对", "true", "true_false"),
    ("fincorpus", lambda r: r["answer_raw"] == "B、Ⅰ、Ⅲ、Ⅳ", "B", "mcq_single"),
    ("fincorpus", lambda r: "&times;" in r["answer_raw"], "40000.2", "numeric"),
    ("cfbenchmark", lambda r: "基点" in r["question"], "D", "mcq_single"),
    ("cfbenchmark", lambda r: r["answer_raw"] == "消极", "消极", "label"),
    ("cfbenchmark", lambda r: r["answer_raw"] == "海峡股份", "海峡股份", "free_text"),
    ("quant_trading_instruct", lambda r: True, None, "code"),
    ("finpee", lambda r: r["meta"]["question_number"] == "189(3)", None, "free_text"),
]


@pytest.mark.parametrize("name,pred,answer,atype", GOLD, ids=[f"{g[0]}-{i}" for i, g in enumerate(GOLD)])
def test_gold_answer_parses(name, pred, answer, atype):
    r = _find(name, pred)
    assert r["answer_type"] == atype
    if answer is not None:
        assert r["answer"] == answer


@pytest.mark.parametrize(
    "raw,choices,expected",
    [
        ("B、煤炭", {"A": "石油", "B": "煤炭", "C": "天然气", "D": "水电"}, ("B", "mcq_single")),
        ('["D"; "E"]', dict.fromkeys("ABCDE", "x"), ("DE", "mcq_multi")),
        ("B; D", dict.fromkeys("ABCD", "x"), ("BD", "mcq_multi")),
        ("A B", dict.fromkeys("ABCD", "x"), ("AB", "mcq_multi")),
        ("DB", dict.fromkeys("ABCD", "x"), ("BD", "mcq_multi")),
        ("正确", None, ("true", "true_false")),
        ("错误", None, ("false", "true_false")),
        ("对", None, ("true", "true_false")),
        ("错", None, ("false", "true_false")),
        ("A、错", {"A": "错", "B": "对"}, ("false", "true_false")),
        ("A、正确", {"A": "正确", "B": "错误"}, ("true", "true_false")),
        ("是", None, ("true", "true_false")),
        ("否", None, ("false", "true_false")),
        ("煤炭", {"A": "石油", "B": "煤炭"}, ("B", "mcq_single")),
    ],
)
def test_choice_answer_forms(raw, choices, expected):
    assert choice_answer(raw, choices) == expected


@pytest.mark.parametrize(
    "x,expected",
    [(10863.0, "10863"), (0.14136, "0.14136"), (-27.0, "-27"), (36003776400000.0, "36003776400000"), (1e-05, "0.00001"),
     ("2,576.0", "2576"), ("$ 11736600.00 \\n", "11736600"), ("14.1%", "0.141"), ("(12)", "-12"), ("yes", None), ("", None), (float("nan"), None)],
)
def test_numbers_are_plain_decimal_strings(x, expected):
    assert to_decimal_str(x) == expected


def test_letters_outside_options_are_rejected():
    assert parse_letters("F", set("ABCD")) is None
    with pytest.raises(Exception, match="not among options"):
        choice_answer("F", dict.fromkeys("ABCD", "x"))


def test_pot_programs_evaluate_without_exec():
    assert eval_program("x0 = 527.7 / 257.6; ans = x0 - 1") == pytest.approx(1.04852, rel=1e-4)
    assert eval_program("ans = __import__('os').getcwd()") is None


# --------------------------------------------------------------------------- question text
def test_finqa_question_has_text_markdown_table_and_question():
    r = _find("finqa", lambda r: r["meta"]["id"] == "VNO/2007/page_192.pdf-1")
    q = r["question"]
    assert "vornado realty trust" in q
    assert "| year ending december 31, | amount |\n|---|---|\n| 2008 | $ 526768 |" in q
    assert q.rstrip().endswith("Question: for the year ending december 31 , 2008 , were principal payments greater than 2009?")
    assert q.index("vornado") < q.index("| 2008 |") < q.index("Question:")
    assert r["math_reasoning"] is True and r["module"] == "金融推理类业务知识"


def test_convfinqa_context_and_earlier_turns():
    turn = _find("convfinqa", lambda r: r["meta"]["_turn_index"] == 3 and r["meta"]["_conv_id"] == "Double_PM/2017/page_38.pdf")
    assert "Question: what was, in millions, the operating income in 2017?\nAnswer: 11503.0" in turn["question"]
    assert "<table" not in turn["question"] and "| cost of sales |" in turn["question"]
    conv = _find("convfinqa_conv", lambda r: r["meta"]["id"] == "Double_ZBH/2003/page_58.pdf")
    q = conv["question"]
    assert "Question: what was the total of inventories in 2003?\nAnswer: 527.7" in q
    assert "Answer: 1.04852" in q  # earlier answer computed from the PoT program
    assert q.rstrip().endswith("what was the change in the total of finished goods, in millions?")
    assert conv["answer"] == "177.6"


def test_math_reasoning_rule():
    assert _find("financeiq", lambda r: "单利投资" in r["question"])["math_reasoning"] is True
    assert _find("financeiq", lambda r: "投资连结保险" in r["question"])["math_reasoning"] is False
    assert _find("fincorpus", lambda r: r["answer_raw"] == "B、46")["math_reasoning"] is True
    assert _find("fincorpus", lambda r: r["answer_raw"] == "A、社会保障税")["math_reasoning"] is False
    assert all(not r["math_reasoning"] for r in load_source("tfns", str(SAMPLES / "tfns" / "sample.jsonl")).records)
    assert all(r["math_reasoning"] for r in load_source("finpee", str(SAMPLES / "finpee" / "sample.jsonl")).records)


# --------------------------------------------------------------------------- upstream layouts
def test_fincuge_positional_arrays(tmp_path):
    rows = [json.loads(ln) for ln in (SAMPLES / "fincuge" / "sample.jsonl").read_text().splitlines()]
    for task in ("finfe", "finre", "finnsp"):
        d = tmp_path / "FinCUGE_Publish" / task
        d.mkdir(parents=True)
        (d / "train_list.json").write_text(json.dumps([r["_raw"] for r in rows if r["task"] == task], ensure_ascii=False))
    (tmp_path / "FinCUGE_Publish" / "finfe" / "problem_list.json").write_text(json.dumps([["只有文本没有标签"]], ensure_ascii=False))
    (tmp_path / "FinCUGE_Publish" / "README.md").write_text("not data")
    res = load_source("fincuge", str(tmp_path))
    assert res.rows_in == 16 and len(res.records) == 15
    assert [q["reason"] for q in res.quarantine] == ["no gold answer (unlabelled FinCUGE finfe test row: 1 fields, expected 2)"]
    assert res.skipped_files == [str(tmp_path / "FinCUGE_Publish" / "README.md")]
    by_task = Counter(r["meta"]["task"] for r in res.records)
    assert by_task == {"finfe": 5, "finre": 5, "finnsp": 5}
    finfe = [r for r in res.records if r["meta"]["task"] == "finfe"]
    assert {r["answer"] for r in finfe} <= {"消极", "中性", "积极"} and all(r["split"] == "train" for r in finfe)
    # same answers as the named-key layout
    named = load_source("fincuge", str(SAMPLES / "fincuge" / "sample.jsonl")).records
    assert sorted(r["answer"] for r in finfe) == sorted(r["answer"] for r in named if r["meta"]["task"] == "finfe")


def test_financeiq_upstream_csv_and_tfns_csv(tmp_path):
    rows = _lines(SAMPLES / "financeiq" / "sample.jsonl")[:5]
    f = tmp_path / "dev" / "注册会计师（CPA）.csv"
    f.parent.mkdir()
    with f.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
        for i, r in enumerate(rows):
            w.writerow([i, r["Question"], r["A"], r["B"], r["C"], r["D"], r["Answer"]])
    res = load_source("financeiq", str(tmp_path))
    assert [r["answer"] for r in res.records] == [r["Answer"] for r in rows]
    assert all(r["split"] == "dev" for r in res.records) and res.records[0]["meta"]["_row_index"] == "0"
    t = tmp_path / "sent_train.csv"
    t.write_text("text,label\n$AAPL up big https://t.co/x,1\nMarkets slide,0\n", encoding="utf-8")
    res = load_source("tfns", str(t))
    assert [r["answer"] for r in res.records] == ["Bullish", "Bearish"] and res.records[0]["split"] == "train"


def test_json_list_dict_of_lists_and_parquet(tmp_path):
    rows = _lines(SAMPLES / "tfns" / "sample.jsonl")[:6]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]}))
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    answers = [load_source("tfns", str(tmp_path / n)) for n in ("a.json", "b.json", "c.parquet")]
    assert [r["answer"] for r in answers[0].records] == [r["answer"] for r in answers[1].records] == [r["answer"] for r in answers[2].records]
    assert answers[0].records[0]["id"] == answers[1].records[0]["id"] == answers[2].records[0]["id"]


def test_finance_instruct_layouts(tmp_path):
    f = tmp_path / "train.jsonl"
    rows = [
        {"system": "You are a financial expert.", "user": "What is a bond?", "assistant": "A bond is a debt security."},
        {"instruction": "计算：100元按10%单利计息一年后的本息和是多少元？", "input": "", "output": "110"},
        {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Define EBITDA."}, {"role": "assistant", "content": "Earnings before interest..."}]},
        {"user": "No answer here", "assistant": ""},
    ]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    res = load_source("finance_instruct_500k", str(f))
    assert res.rows_in == 4 and len(res.records) == 3
    a, b, c = res.records
    assert (a["question"], a["answer"], a["answer_type"], a["language"]) == ("What is a bond?", "A bond is a debt security.", "free_text", "en")
    assert a["meta"]["system"] == "You are a financial expert."
    assert (b["answer"], b["answer_type"], b["language"], b["math_reasoning"]) == ("110", "numeric", "zh", True)
    assert c["question"] == "Define EBITDA." and c["meta"]["system"] == "sys"
    assert res.quarantine[0]["reason"].startswith("no gold answer")


def test_hub_code_path_via_packaged_builders(tmp_path):
    """The hub path is datasets.load_dataset(hub_id, split=...); run it on local files through the
    packaged json/csv builders (no network here)."""
    rows = _lines(SAMPLES / "tfns" / "sample.jsonl")
    f = tmp_path / "tfns.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    res = load_source("tfns", hub_id="json", split="train", hub_kwargs={"data_files": str(f)}, limit=10)
    assert res.rows_in == 10 and [r["answer"] for r in res.records][:3] == ["Bearish", "Bullish", "Neutral"]
    assert res.records[0]["meta"]["provenance"]["source_file"] == "hf://json[train]"
    local = load_source("tfns", str(f), limit=10)
    assert [r["id"] for r in res.records] == [r["id"] for r in local.records]
    with pytest.raises(IngestError, match="hub no-such/dataset-xyz: cannot load dataset"):
        load_source("tfns", hub_id="no-such/dataset-xyz", split="train")


# --------------------------------------------------------------------------- bad input
def test_malformed_records_are_quarantined_with_reasons(tmp_path):
    good = _lines(SAMPLES / "financeiq" / "sample.jsonl")[0]
    rows = [
        good,
        {**good, "Question": ""},  # no question
        {**good, "Answer": "Z"},  # unparseable answer
        {**good, "Question": ["a", "list"]},  # wrong type
        {**good, "Answer": ""},  # unlabelled
        good,  # exact duplicate
    ]
    f = tmp_path / "dev.jsonl"
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{not json\n42\n")
    res = load_source("financeiq", str(f))
    assert res.rows_in == 8 and len(res.records) == 1 and len(res.quarantine) == 7
    reasons = [q["reason"] for q in res.quarantine]
    assert reasons[0] == "no question (field Question/question missing or empty)"
    assert reasons[1].startswith("unparseable answer 'Z'")
    assert reasons[2] == "wrong type: Question is list, expected text"
    assert reasons[3].startswith("no gold answer")
    assert reasons[4].startswith("duplicate of row 0")
    assert reasons[5].startswith("invalid JSON on line 7")
    assert reasons[6] == "wrong type: row is int, expected a JSON object"
    assert [q["row_index"] for q in res.quarantine] == [1, 2, 3, 4, 5, 6, 7]
    assert json.loads(res.quarantine[0]["raw"])["Answer"] == good["Answer"]


@pytest.mark.parametrize(
    "fname,content,source,pattern",
    [
        ("x.jsonl", "this is not json\nneither is this\n", "tfns", r"x\.jsonl: not JSON Lines: no line parses as JSON"),
        ("x.json", "{broken", "tfns", r"x\.json: not valid JSON"),
        ("x.parquet", "not parquet at all", "tfns", r"x\.parquet: not a Parquet file"),
        ("x.csv", b"\xff\xfe\x00\x01binary", "tfns", r"x\.csv: not a UTF-8 CSV file"),
        ("x.txt", "hello", "tfns", r"x\.txt: unsupported file type '\.txt'"),
        ("x.jsonl", '{"text": "a", "label": 0}\n', "finqa", r"x\.jsonl: not a finqa file: no row has the expected fields"),
    ],
)
def test_wrong_format_fails_with_one_line(tmp_path, fname, content, source, pattern):
    f = tmp_path / fname
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(IngestError, match=pattern) as e:
        load_source(source, str(f))
    assert "\n" not in str(e.value)


def test_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(IngestError, match="no such file or directory"):
        load_source("tfns", str(tmp_path / "nope"))
    with pytest.raises(IngestError, match="directory holds no data files"):
        load_source("tfns", str(tmp_path))


# --------------------------------------------------------------------------- writing + distribution
def test_ingest_writes_records_and_quarantine(tmp_path):
    counts = ingest("cfbenchmark", str(SAMPLES / "cfbenchmark" / "sample.jsonl"), str(tmp_path / "out"))
    assert (counts["rows_in"], counts["records"], counts["quarantined"]) == (40, 38, 2)
    rec = pq.read_table(tmp_path / "out" / "records" / "cfbenchmark.parquet")
    q = pq.read_table(tmp_path / "out" / "quarantine" / "cfbenchmark.parquet")
    assert rec.schema.equals(RECORD_SCHEMA) and q.schema.equals(QUARANTINE_SCHEMA)
    assert rec.num_rows == 38 and q.num_rows == 2
    assert set(q.column("reason").to_pylist()) == {"no gold answer (answer is 'nan' in the source)"}
    manifest = json.loads((tmp_path / "out" / "records" / "_shards" / "cfbenchmark.json").read_text())
    assert manifest["rows"] == 38 and manifest["extra"]["rows_in"] == 40


def test_ingest_sources_caps_and_distribution_table():
    specs = [SourceSpec(name=n, path=str(SAMPLES / n / "sample.jsonl"), max_rows=7) for n in ("finqa", "tfns", "cfbenchmark")]
    recs, quar = ingest_sources(specs, limit=5)
    assert Counter(r["repo_name"] for r in recs) == {"finqa": 5, "tfns": 5, "cfbenchmark": 5}
    specs[0].max_rows = 3
    recs, quar = ingest_sources(specs, limit=None)
    assert Counter(r["repo_name"] for r in recs) == {"finqa": 3, "tfns": 7, "cfbenchmark": 7}
    table = distribution_table(recs, quar)
    lines = table.splitlines()
    assert lines[0].startswith("| source | rows |")
    assert "| finqa | 3 | 0 | numeric 2, true_false 1 | 2948 |" in lines
    assert any(ln.startswith("| tfns | 7 | 0 | label 7 |") for ln in lines)
    assert lines[-1] == "| **total** | **17** | **0** | | 5399 |"  # seed total of the listed sources


# --------------------------------------------------------------------------- CLI
def test_cli_sources_lists_every_source():
    out = CliRunner().invoke(app, ["sources"], terminal_width=250)
    assert out.exit_code == 0, out.output
    for s in SOURCES.values():
        assert s.name in out.output
    assert "zeroshot/twitter-financial-news-sentiment" in out.output and "Josephgflowers/Finance-Instruct-500k" in out.output
    assert "mcq_multi" in out.output and "positional arrays" in out.output


def test_cli_ingest_writes_and_prints_counts(tmp_path):
    out = CliRunner().invoke(app, ["ingest", "--source", "fincorpus", "--path", str(SAMPLES / "fincorpus"), "--out", str(tmp_path / "o")])
    assert out.exit_code == 0, out.output
    assert "fincorpus: 40 in -> 40 records, 0 quarantined" in out.output
    assert "mcq_multi 12" in out.output
    assert pq.read_table(tmp_path / "o" / "records" / "fincorpus.parquet").num_rows == 40


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("garbage\n")
    p = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ingest", "--source", "tfns", "--path", str(bad), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert err == [f"error: {bad}: not JSON Lines: no line parses as JSON (line 1: Expecting value: line 1 column 1 (char 0))"]
    out = CliRunner().invoke(app, ["ingest", "--source", "nosuch", "--path", str(bad), "--out", str(tmp_path / "o")])
    assert out.exit_code == 2 and "unknown source 'nosuch'" in out.output
