from finr1_core.config import FilterConfig
from finr1_core.dedup import char_ngrams, decontaminate, dedup_and_decontaminate, exact_dedup, near_dedup

Q1 = "某企业材料采用计划成本核算，月初材料计划成本为30万元，材料成本差异为节约2万元；当月购入材料的实际成本为110万元，计划成本为120万元；当月领用材料的计划成本为100万元，月末该企业结存材料的实际成本为多少万元？"
Q1_NEAR = Q1.replace("月初材料计划成本为30万元", "月初材料计划成本为30万元整")  # one char added
Q2 = "发达国家社会保障的资金来源主要是什么？请说明社会保障税、社会保障收费、一般税收、企业收入和公债收入之间的区别。"
TEMPLATE = "请一步步思考，回答以下问题，并将最后的答案放在boxed{}中。\n"


def row(key, rid, q, src="fincorpus"):
    return {"key": key, "record_id": rid, "repo_name": src, "question": q}


def test_char_ngrams():
    assert char_ngrams("abcd", 2) == {"ab", "bc", "cd"}
    assert char_ngrams("ab", 5) == {"ab"}


def test_exact_dedup_normalizes_and_keeps_samples_of_one_record():
    rows = [row("a0", "r1", Q1), row("a1", "r1", Q1),  # two samples of one record: both kept
            row("b0", "r2", " " + Q1.replace("，", ",") + "  "),  # same text up to spaces/punctuation
            row("c0", "r3", Q2)]
    res = exact_dedup(rows)
    assert [r["key"] for r in res.kept] == ["a0", "a1", "c0"]
    assert [(r["key"], r["step"], r["matched"]) for r in res.removed] == [("b0", "exact_dup", "r1")]
    assert "same normalized text" in res.removed[0]["reason"]


def test_near_dedup_chinese_with_minhash_and_threshold():
    rows = [row("a", "r1", Q1), row("b", "r2", Q1_NEAR), row("c", "r3", Q2)]
    res = near_dedup(rows, threshold=0.8, ngram=5)
    assert [r["key"] for r in res.kept] == ["a", "c"]
    (rm,) = res.removed
    assert rm["key"] == "b" and rm["step"] == "near_dup" and rm["matched"] == "r1" and "MinHash Jaccard" in rm["reason"]
    # a stricter threshold keeps it
    assert len(near_dedup(rows, threshold=0.99, ngram=5).removed) == 0


def test_decontaminate_13grams_ignores_shared_templates():
    eval_texts = {"fineval-7": TEMPLATE + Q2}
    rows = [row("t0", "r0", TEMPLATE + Q1), row("t1", "r1", TEMPLATE + "完全不同的第一道题目，关于固定资产折旧方法的选择。"),
            row("t2", "r2", TEMPLATE + "另一道题：关于货币时间价值与年金现值系数的计算。"),
            row("t3", "r3", TEMPLATE + "题干引用了评测集：" + Q2[:20] + "……")]
    res = decontaminate(rows, eval_texts, ngram=13)
    assert [r["key"] for r in res.kept] == ["t0", "t1", "t2"]  # the template alone is not a leak
    (rm,) = res.removed
    assert rm["key"] == "t3" and rm["step"] == "decontam" and rm["matched"] == "fineval-7" and "13-gram" in rm["reason"]
    # n is configurable: a 20-char overlap is not a 30-gram hit
    assert decontaminate(rows, eval_texts, ngram=30).removed == []


def test_pipeline_reports_every_removal():
    rows = [row("a", "r1", Q1), row("b", "r2", Q1), row("c", "r3", Q1_NEAR), row("d", "r4", Q2), row("e", "r5", "短")]
    res = dedup_and_decontaminate(rows, [Q2], FilterConfig(minhash_threshold=0.8))
    assert len(res.kept) + len(res.removed) == len(rows)
    assert res.counts() == {"exact_dup": 1, "near_dup": 1, "decontam": 1}
    assert [r["key"] for r in res.kept] == ["a", "e"]


def test_near_dup_keeps_items_with_different_gold_answers():
    """ConvFinQA turns repeat the whole filing and differ in the last question and the answer."""
    from finr1_core.dedup import near_dedup

    context = "In 2019 revenue was $ 1,234 million and in 2018 it was $ 1,100 million. " * 20
    rows = [
        {"key": "k1", "record_id": "t0", "question": context + "What was revenue in 2019?", "gold": "1234"},
        {"key": "k2", "record_id": "t1", "question": context + "What was the change?", "gold": "134"},
        {"key": "k3", "record_id": "t2", "question": context + "What was revenue in 2019 ?", "gold": "1234"},
    ]
    res = near_dedup(rows, threshold=0.85)
    assert [r["key"] for r in res.kept] == ["k1", "k2"]
    assert [(r["key"], r["step"], r["matched"]) for r in res.removed] == [("k3", "near_dup", "t0")]
