import pytest

from finr1_core.extract import boxed_contents, extract_answer, split_think


def test_split_think_forms():
    assert split_think("<think>\nR1\n</think>\n\nA1") == ("R1", "A1")
    assert split_think("R only</think>ans") == ("R only", "ans")  # forced prefix not in the returned text
    assert split_think("<think>never closed") == ("never closed", "")
    assert split_think("no tags at all") == ("", "no tags at all")
    assert split_think("") == ("", "")
    assert split_think(None) == ("", "")


@pytest.mark.parametrize("text,expected", [
    (r"<think>maybe \boxed{A}</think>so \boxed{B}", "B"),  # answer part wins over think block
    (r"\boxed{A} then later \boxed{C}", "C"),  # last boxed
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
    (r"\boxed{\text{D}}", r"\text{D}"),
    (r"x \boxed{a{b{c}}d} y", "a{b{c}}d"),
    (r"\fbox{42}", "42"),
    (r"<think>thinking \boxed{7}</think>", "7"),  # empty answer part -> think block
    ("<think>x</think>\n答案是 B。", "B"),
    ("<think>x</think>\n最终答案：12.5%", "12.5%"),
    ("<think>x</think>\nSo the answer is 2,576.", "2,576"),
    ("<think>x</think>\nThe final answer is: (C)", "(C)"),
    ("<think>x</think>\n我选择 **B**", "B"),
    ("<think>x</think>\n答案是 **A**，因为其他选项都错", "A"),
    ("<think>x</think>\n答案是C，因为……", "C"),
    ("first 答案是 A\n second 答案是 D", "D"),  # last phrase occurrence
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_none_and_no_think_fallback_when_answer_present():
    assert extract_answer("") is None
    assert extract_answer("just some words") is None
    # the answer part is non-empty but has no answer: the think block is NOT used
    assert extract_answer(r"<think>\boxed{A}</think>I am not sure.") is None
    assert extract_answer(r"\boxed{unclosed") is None


def test_boxed_contents_order():
    assert boxed_contents(r"\boxed{1} and \boxed{ {2} }") == ["1", " {2} "]


def test_parentheses_are_kept_for_accounting_negatives():
    assert extract_answer("<think>x</think>The answer is (1,234).") == "(1,234)"
