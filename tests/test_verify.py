"""The rule verifier: a big table of equivalence cases (every form the verifier accepts)."""
import time

import pytest

from finr1_core.verify import infer_answer_type, parse_letters, parse_number, verify

C, I, U = "correct", "incorrect", "unknown"

CASES = [
    # ---- option letters, single and multi (gold normalized or raw) ----
    ("B", "B", None, C), ("B", r"\boxed{B}", None, C), ("B", r"\boxed{C}", None, I),
    ("B", "B、煤炭", None, C), ("B、煤炭", r"\boxed{B}", None, C), ("B、煤炭", r"\boxed{A}", None, I),
    ("DE", '["D"; "E"]', None, C), ('["D"; "E"]', r"\boxed{D,E}", None, C), ('["D"; "E"]', r"\boxed{D}", None, I),
    ("BD", "B; D", None, C), ("B; D", r"\boxed{BD}", None, C), ("BD", r"\boxed{D; B}", None, C),
    ("ABD", "A、B、D", None, C), ("ABD", r"\boxed{A、B}", None, I), ("ABD", r"\boxed{ABD}", None, C),
    ("D", r"\boxed{\text{D}}", None, C), ("D", r"\text{D}", None, C), ("B", "(B)", None, C), ("B", r"\boxed{(B)}", None, C),
    ("D", "D. text of the option", None, C), ("D", r"\boxed{D. 交易性金融资产}", None, C),
    ("ABC", "A、自营性个人住房贷款; B、公积金个人住房贷款; C、个人住房组合贷款", None, C),
    ("A、自营性个人住房贷款; B、公积金个人住房贷款", r"\boxed{A,B}", None, C),
    ("B、Ⅰ、Ⅲ、Ⅳ", r"\boxed{B}", None, C), ("C、股票、债券、基金", r"\boxed{C}", None, C),
    ("AB", "A B", "mcq_multi", C), ("C", "选C", "mcq_single", C), ("C", "<think>…</think>答案是 **C**", None, C),
    ("C", r"<think>A? B?</think>\boxed{c}", "mcq_single", U),  # lowercase is not an option letter
    ("A", r"<think>x</think>\boxed{社会保障税}", "mcq_single", "options"),  # option text -> letter via question
    ("A", "<think>x</think>I cannot tell which one is right", "mcq_single", U),
    # ---- true / false ----
    ("true", "正确", None, C), ("true", r"\boxed{正确}", None, C), ("false", r"\boxed{错误}", None, C),
    ("false", r"\boxed{正确}", None, I), ("是", r"\boxed{是}", None, C), ("是", r"\boxed{否}", None, I),
    ("否", "no", None, C), ("yes", r"\boxed{Yes}", None, C), ("yes", r"\boxed{no}", None, I),
    ("true", r"\boxed{True}", None, C), ("false", r"\boxed{FALSE}", None, C), ("对", r"\boxed{错}", None, I),
    ("错", r"\boxed{错误}", None, C), ("正确", r"\boxed{对}", None, C), ("false", r"\boxed{不正确}", None, C),
    ("A、错", r"\boxed{错}", None, C), ("A、错", r"\boxed{A}", None, C), ("B、对", r"\boxed{A}", None, I),
    ("B、对", r"\boxed{B、对}", None, C), ("false", "该说法错误", "true_false", C),
    # ---- labels ----
    ("Bearish", r"\boxed{Bearish}", None, C), ("Bearish", r"\boxed{bearish}", None, C), ("bullish", "BULLISH", None, C),
    ("Neutral", r"\boxed{Bullish}", None, I), ("消极", r"\boxed{消极}", None, C), ("中性", r"\boxed{积极}", None, I),
    ("积极", "积极", "label", C), ("Neutral", "The sentiment is neutral.", "label", C),
    ("Bearish", r"<think>x</think>\boxed{Neutral}", "label", I),
    # one sentence naming one label (the 135M model's usual answer, 49 characters) is read; a negated
    # label, two labels or two sentences are not
    ("Bullish", "The sentiment of this financial tweet is Bullish.", "label", C),
    ("Neutral", "The sentiment of this financial tweet is Bullish.", "label", I),
    ("Bullish", "The sentiment of this financial tweet is not Bullish.", "label", U),
    ("Bullish", "The sentiment of this financial tweet is Bullish or maybe Bearish", "label", U),
    ("Bullish", "The tweet talks about earnings. Overall the sentiment is Bullish.", "label", U),
    # ---- numbers ----
    ("1234567", "1,234,567", None, C), ("1234567", r"\boxed{\$1,234,567}", None, C), ("1234.5", "$1,234.50", None, C),
    ("-1234", "(1,234)", None, C), ("-1234", r"\boxed{(1,234)}", None, C), ("1234", "(1,234)", None, U),  # sign only
    ("500", "¥500", None, C), ("500", "500元", None, C), ("500", "￥500", None, C), ("500", "USD 500", None, C),
    ("0.2", "20%", None, C), ("20%", "0.2", None, C), ("0.134", r"\boxed{13.4\%}", None, C), ("0.0894", "8.94 %", None, C),
    ("0.14136", r"\boxed{14.1\%}", None, C), ("0.14136", r"\boxed{14.1}", "numeric", U),  # off by 100 without %
    ("0.2", "30%", None, I),
    ("30000", "3万", None, C), ("300000000", "3亿", None, C), ("1.5亿元", r"\boxed{1.5亿}", None, C),
    ("1.5亿", "1.5亿元", None, C), ("3000000", "3百万", None, C), ("3000", "3千", None, C),
    ("75000000.0", "75 million", None, C), ("2000", "2 thousand", None, C), ("4500000000", "4.5 billion", None, C),
    ("3.2", "3.2万元", "numeric", C),  # the question's unit (万元) repeated in the answer
    ("3.2", "净利润为3.2万元", "numeric", C),
    ("0.5", r"\frac{1}{2}", None, C), ("0.5", r"\boxed{\dfrac{1}{2}}", None, C), (r"\frac{3}{4}", "0.75", None, C),
    ("1200", r"1.2 \times 10^{3}", None, C), ("0.0025", "2.5e-3", None, C), ("2.5e-3", "0.0025", None, C),
    ("0.7071", r"\boxed{\sqrt{2}/2}", None, C), ("0.5", r"\boxed{\sqrt{2}/2}", None, I),  # via math-verify
    ("0.37738", "0.377", None, C), ("0.37738", "0.39", None, I), ("100", "100.9", None, C), ("100", "102", None, I),
    ("2576.0", "The answer is 2,576.", None, C), ("12", "x = 5 + 7 = 12", None, C), ("12", r"\boxed{约 12}", None, C),
    ("-0.11268", r"\boxed{-11.27\%}", None, C), ("-0.11268", r"\boxed{11.27\%}", None, U),
    ("11503.0", r"<think>long</think>\boxed{11,503}", None, C), ("11503.0", r"<think>long</think>\boxed{11,000}", None, I),
    ("75000000", r"\boxed{75}", "numeric", U),  # 'in millions' is not a clear deviation
    ("12", "about 12 or maybe 13", "numeric", U),  # two numbers: the rules cannot decide
    ("12", r"\boxed{yes}", "numeric", I),
    ("yes", "Yes, it is greater.", None, C), ("false", "不正确，因为……", None, C), ("1.2万亿", "1.2 trillion", None, C),
    ("-0.05", "−5%", None, C), ("BD", "B和D", None, C), ("AC", "(A) and (C)", None, C), ("12000000", "1200万元", None, C),
    ("25%", "1/4", None, C), ("B", "Answer: B", None, C), ("B", "答案：B。", None, C),
    # ---- free text and code ----
    ("供给减少导致市场价格提升", "供给减少导致市场价格提升。", None, C),
    ("供给减少导致市场价格提升", "价格上涨", None, U),
    ("Apple Inc.", "apple inc", "free_text", C), ("Apple Inc.", "Microsoft", "free_text", U),
    ("print(1)", "print(1)", "code", C), ("print(1)", "print(2)", "code", U),
    # ---- unparseable / empty gold: unknown, never correct ----
    ("", "B", None, U), ("None", r"\boxed{B}", None, U), (None, "anything", None, U), ("   ", "", None, U),
    ("not a number", r"\boxed{12}", "numeric", U), ("not a number", "not a number", "numeric", C),
    ("xyz", r"\boxed{B}", "mcq_single", U), ("maybe", r"\boxed{true}", "true_false", U),
    ("whatever", r"\boxed{Bullish}", "label", U),
    # ---- empty prediction: incorrect ----
    ("B", "", None, I), ("0.5", "   ", None, I), ("true", None, None, I), ("B", "<think>\n\n</think>\n\n", None, I),
]


@pytest.mark.parametrize("gold,pred,atype,expected", CASES)
def test_verify_table(gold, pred, atype, expected):
    q = "发达国家社会保障的资金来源主要是（）。\nA、社会保障税\nB、社会保障收费\nC、一般税收\nD、企业收入和公债收入"
    v = verify(gold, pred, atype, question=q)
    if expected == "options":
        assert v.verdict == C and v.extracted == "A", v
        return
    assert v.verdict == expected, (gold, pred, v)
    assert v.reason


def test_unparseable_gold_is_never_correct_whatever_the_prediction():
    for gold in ["", None, "None", "nan"]:
        for pred in ["", "B", r"\boxed{1}", "true", "Bearish"]:
            assert verify(gold, pred).verdict == U


def test_rel_tol_is_configurable():
    assert verify("100", "103").verdict == I
    assert verify("100", "103", rel_tol=0.05).verdict == C
    assert verify("100", "100.5", rel_tol=0.0).verdict == I


def test_extracted_values():
    assert verify("DE", r"\boxed{E、D}").extracted == "DE"
    assert verify("true", r"\boxed{对}").extracted == "true"
    assert verify("0.2", r"<think>x</think>\boxed{20\%}").extracted == r"20\%"
    assert verify("B", "").extracted is None


@pytest.mark.parametrize("gold,atype", [
    ("DE", "mcq_multi"), ("B", "mcq_single"), ("B、煤炭", "mcq_single"), ('["D"; "E"]', "mcq_multi"),
    ("true", "true_false"), ("否", "true_false"), ("A、错", "true_false"), ("Bearish", "label"), ("中性", "label"),
    ("0.134", "numeric"), ("-1,234", "numeric"), ("14.1%", "numeric"), (r"\frac{1}{2}", "numeric"),
    ("供给减少导致市场价格提升", "free_text"),
])
def test_infer_answer_type(gold, atype):
    assert infer_answer_type(gold) == atype


def test_parsers_directly():
    assert parse_letters("A、B、D") == "ABD"
    assert parse_letters("hello") is None
    n = parse_number("(1,234.5)")
    assert n.value == -1234.5 and not n.pct
    assert parse_number("12.5%").pct
    assert parse_number("3亿元").value == 3e8
    assert parse_number("two") is None


def test_throughput_floor():
    """Rule-decidable rows must be cheap (the benchmark measures it properly; this is a floor)."""
    rows = [("B", "<think>" + "分析。" * 200 + "</think>\n\n答案是 \\boxed{B}"),
            ("0.134", "<think>" + "step " * 300 + "</think>The answer is \\boxed{13.4\\%}."),
            ("true", "<think>x</think>\\boxed{正确}"), ("Bearish", "<think>x</think>\\boxed{Bearish}")] * 1000
    t = time.perf_counter()
    out = [verify(g, p).verdict for g, p in rows]
    dt = time.perf_counter() - t
    assert set(out) == {C}
    assert len(rows) / dt > 5000, f"{len(rows) / dt:.0f} rows/s"
