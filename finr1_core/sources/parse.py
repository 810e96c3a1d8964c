"""Shared parsing helpers for the loaders: text fields, answers, tables, language, math rule."""
from __future__ import annotations

import ast
import html
import json
import math
import operator
import re
from decimal import Decimal, InvalidOperation
from typing import Any


class Skip(Exception):
    """A row-level problem: the row goes to quarantine with this one-line reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = " ".join(str(reason).split())


# --------------------------------------------------------------------------- fields
def is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    if isinstance(v, str) and not v.strip():
        return True
    return False


def get_text(row: dict, *keys: str, what: str | None = None, required: bool = True, allow_numbers: bool = False) -> str | None:
    """The first non-empty text among ``keys``. A present value of another type is a wrong type."""
    for k in keys:
        if k not in row:
            continue
        v = row[k]
        if is_missing(v):
            continue
        if isinstance(v, str):
            return v
        if allow_numbers and isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        raise Skip(f"wrong type: {k} is {type(v).__name__}, expected text")
    if required:
        raise Skip(f"no {what or keys[0]} (field {'/'.join(keys)} missing or empty)")
    return None


def raw_str(v: Any) -> str:
    """The answer as the source gave it, as a string (non-strings as JSON)."""
    if isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False, default=str)


# --------------------------------------------------------------------------- numbers
_NUM_CLEAN = re.compile(r"[\s,$¥￥€£]|\\n")
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def to_decimal_str(x: Any) -> str | None:
    """A number as a plain decimal string (``10863.0`` -> ``"10863"``, ``1e-05`` -> ``"0.00001"``).

    Strings may carry thousands separators, currency signs, a trailing ``%`` (divided by 100) or a
    parenthesised negative. Returns None when ``x`` is not a number.
    """
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int,)):
        d = Decimal(x)
    elif isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return None
        d = Decimal(repr(x))
    elif isinstance(x, str):
        s = _NUM_CLEAN.sub("", html.unescape(x)).strip()
        neg = False
        if s.startswith("(") and s.endswith(")"):
            s, neg = s[1:-1], True
        pct = s.endswith("%")
        if pct:
            s = s[:-1]
        if not _NUMBER_RE.match(s):
            return None
        try:
            d = Decimal(s)
        except InvalidOperation:
            return None
        if pct:
            d = d / Decimal(100)
        if neg:
            d = -d
    elif hasattr(x, "item"):  # numpy scalar
        return to_decimal_str(x.item())
    else:
        return None
    s = format(d.normalize(), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    return s


_FINAL_NUM = re.compile(r"=\s*([+-]?\d[\d,]*(?:\.\d+)?)\s*(%|[（(]?\s*(?:万元|亿元|元|美元|万|亿|%|个|股|年|天|次)\s*[）)]?)?\s*[。.]?\s*$")


def final_number(text: str) -> str | None:
    """The result of a worked calculation ending in ``= <number> [unit]`` (FinCorpus 计算题), else None."""
    t = html.unescape(text).strip()
    m = _FINAL_NUM.search(t)
    if not m:
        return None
    num = m.group(1)
    if (m.group(2) or "").strip() == "%":
        num += "%"
    return to_decimal_str(num)


# --------------------------------------------------------------------------- true / false
# No single Latin letters here: "F" or "T" could be an option letter.
TRUE_WORDS = {"true", "yes", "正确", "对", "是", "√", "correct", "right"}
FALSE_WORDS = {"false", "no", "错误", "错", "否", "×", "incorrect", "wrong", "不正确", "不对"}


def parse_tf(s: Any) -> bool | None:
    if isinstance(s, bool):
        return s
    if not isinstance(s, str):
        return None
    t = s.strip().strip("。.!！\"'“”").strip().lower()
    if t in TRUE_WORDS:
        return True
    if t in FALSE_WORDS:
        return False
    return None


def tf_str(b: bool) -> str:
    return "true" if b else "false"


# --------------------------------------------------------------------------- option letters
LETTERS = "ABCDEFGH"
_OPT_MARK = r"[、.．:：)）\s]"
_LEAD_LETTER = re.compile(rf"^\(?([A-H])(?:{_OPT_MARK}|$)")
_OPTION_LINE = re.compile(r"^\s*\(?([A-H])\s*(?:[、.．:：)）]|\s)\s*(.*?)\s*$")


def parse_option_lines(text: str) -> dict[str, str] | None:
    """Options written into an instruction as lines ``A、...``, ``A: ...``, ``A. ...``.

    Returns a dict of consecutive letters from A (at least two), else None.
    """
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = _OPTION_LINE.match(line)
        if not m:
            continue
        letter, body = m.group(1), m.group(2)
        expected = LETTERS[len(found)] if len(found) < len(LETTERS) else None
        if letter == "A" and found:  # a second option block: keep the last one (the real options)
            found = {}
            expected = "A"
        if letter == expected and body:
            found[letter] = body
    return found if len(found) >= 2 else None


def parse_letters(s: Any, valid: set[str] | None = None, allow_text: bool = True) -> list[str] | None:
    """Option letters in the answer forms the sources use, sorted and unique, or None.

    Handles ``"C"``, ``"AB"``, ``"A B D"``, ``"A,B"``, ``"B、煤炭"``, ``"B; D"``, ``'["D"; "E"]'``,
    ``"A、所得税费用; B、毛利; D、利息"`` (the last two only with ``allow_text``). Letters outside
    ``valid`` (when given) -> None.
    """
    if not isinstance(s, str):
        if isinstance(s, (list, tuple)) and s and all(isinstance(x, str) for x in s):
            parts = [x.strip() for x in s]
            return _letters_ok(parts, valid) if all(re.fullmatch(r"[A-H]", p) for p in parts) else None
        return None
    t = html.unescape(s).strip().strip("。.").strip()
    if not t:
        return None
    # JSON-ish list: ["D"; "E"] or ["A", "B"]
    if t.startswith("[") and t.endswith("]"):
        items = [x.strip().strip("\"'").strip() for x in re.split(r"[;,；，]", t[1:-1])]
        if items and all(re.fullmatch(r"[A-H]", x) for x in items):
            return _letters_ok(items, valid)
        return None
    # bare letters: "A", "AB", "A B D", "A,B", "A、B", "A/B"
    if re.fullmatch(r"[A-H](?:\s*[,，、/;；\s]?\s*[A-H])*", t):
        return _letters_ok(re.findall(r"[A-H]", t), valid)
    if not allow_text:
        return None
    # option-with-text items separated by ; : "A、xxx; B、yyy"
    parts = [p.strip() for p in re.split(r"[;；]", t) if p.strip()]
    letters = []
    for p in parts:
        m = _LEAD_LETTER.match(p)
        if not m:
            return None
        letters.append(m.group(1))
    return _letters_ok(letters, valid) if letters else None


def _letters_ok(letters: list[str], valid: set[str] | None) -> list[str] | None:
    out = sorted(set(letters))
    if valid is not None and not set(out) <= valid:
        return None
    return out


def choice_answer(raw: Any, choices: dict[str, str] | None) -> tuple[str, str]:
    """(answer, answer_type) for an item with options. Raises Skip when it cannot be parsed.

    Letters -> ``mcq_single``/``mcq_multi``. A judgement item whose options are only 对/错
    (``A、错``/``B、对``) -> ``true_false``. A bare 正确/错误/对/错/是/否 -> ``true_false``. An answer equal
    to one option's text -> that option's letter.
    """
    valid = set(choices) if choices else None
    s = raw if isinstance(raw, str) else (raw_str(raw) if raw is not None else "")
    letters = parse_letters(raw if not isinstance(raw, str) else s, valid, allow_text=bool(choices))
    if letters:
        if choices and len(letters) == 1 and all(parse_tf(v) is not None for v in choices.values()):
            return tf_str(bool(parse_tf(choices[letters[0]]))), "true_false"
        return "".join(letters), ("mcq_single" if len(letters) == 1 else "mcq_multi")
    tf = parse_tf(s)
    if tf is not None:
        return tf_str(tf), "true_false"
    m = re.match(r"^([A-H])、\s*(\S.*)$", html.unescape(s).strip())
    if not choices and m:  # "B、对" / "B、煤炭" when the options could not be read from the text
        tf = parse_tf(m.group(2))
        return (tf_str(tf), "true_false") if tf is not None else (m.group(1), "mcq_single")
    if choices:
        st = html.unescape(s).strip()
        hits = [k for k, v in choices.items() if v.strip() == st]
        if len(hits) == 1:
            return hits[0], "mcq_single"
        bad = parse_letters(s, None)
        if bad:
            raise Skip(f"answer letter(s) {''.join(bad)} not among options {''.join(sorted(choices))}: {_short(s)}")
    raise Skip(f"unparseable answer {_short(s)!s} (expected option letters or 正确/错误)")


def _short(s: str, n: int = 60) -> str:
    s = " ".join(str(s).split())
    return repr(s if len(s) <= n else s[:n] + "…")


def choices_from_columns(row: dict, letters: str = LETTERS) -> dict[str, str] | None:
    """Options stored as columns ``A``..``H`` (missing / empty columns are skipped)."""
    out: dict[str, str] = {}
    for L in letters:
        if L in row and not is_missing(row[L]):
            v = row[L]
            if isinstance(v, bool):
                raise Skip(f"wrong type: option {L} is bool, expected text")
            if isinstance(v, (int, float)):
                v = to_decimal_str(v) or str(v)
            if not isinstance(v, str):
                raise Skip(f"wrong type: option {L} is {type(v).__name__}, expected text")
            out[L] = v.strip()
    return out or None


# --------------------------------------------------------------------------- language
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_lang(text: str) -> str:
    """``zh`` when CJK characters make up at least 10% of the letters, else ``en``."""
    cjk = len(_CJK.findall(text or ""))
    lat = len(_LATIN.findall(text or ""))
    return "zh" if cjk and cjk >= 0.1 * (cjk + lat / 5) else "en"


# --------------------------------------------------------------------------- tables
def _cell(x: Any) -> str:
    return " ".join(str("" if x is None else x).split()).replace("|", "\\|")


def table_to_markdown(rows: list[list[Any]]) -> str:
    """Rows (the first is the header) -> a GitHub Markdown table."""
    rows = [list(r) for r in rows if isinstance(r, (list, tuple))]
    if not rows:
        return ""
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(_cell(c) for c in rows[0]) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


_HTML_TABLE = re.compile(r"<table[^>]*>(.*?)</table>", re.S | re.I)
_TR = re.compile(r"<tr[^>]*>(.*?)</tr>", re.S | re.I)
_TD = re.compile(r"<t[dh][^>]*>(.*?)</t[dh]>", re.S | re.I)


def html_tables_to_markdown(text: str) -> str:
    """Replace each ``<table>`` in ``text`` with a Markdown table (drops a leading 1..n row-number column)."""

    def repl(m: re.Match) -> str:
        rows = [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in _TD.findall(tr)] for tr in _TR.findall(m.group(1))]
        rows = [r for r in rows if r]
        if rows and all(r and r[0] == str(i + 1) for i, r in enumerate(rows)):
            rows = [r[1:] for r in rows]
        return "\n\n" + table_to_markdown(rows) + "\n\n"

    return _HTML_TABLE.sub(repl, text)


def pipe_table_to_markdown(text: str) -> str:
    """A ``a | b | c`` newline-separated table (PoT ConvFinQA) -> Markdown (first line = header)."""
    rows = [[c.strip() for c in line.split(" | ")] for line in str(text).splitlines() if line.strip()]
    return table_to_markdown(rows)


# --------------------------------------------------------------------------- safe arithmetic
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv, ast.Pow: operator.pow}


def eval_program(program: str) -> float | None:
    """Evaluate a PoT snippet such as ``x0 = 60.94 - 25.14; ans = x0 / 25.14`` without exec.

    Only number literals, names assigned earlier, + - * / ** and unary minus are allowed; anything
    else (calls, attributes, ...) returns None.
    """
    try:
        tree = ast.parse("\n".join(part.strip() for part in program.split(";")))
    except (SyntaxError, ValueError):
        return None
    env: dict[str, float] = {}

    def ev(n: ast.AST) -> float:
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            return float(n.value)
        if isinstance(n, ast.Name) and n.id in env:
            return env[n.id]
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            a, b = ev(n.left), ev(n.right)
            if isinstance(n.op, ast.Pow) and abs(b) > 64:
                raise ValueError("exponent too large")
            return _OPS[type(n.op)](a, b)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            v = ev(n.operand)
            return -v if isinstance(n.op, ast.USub) else v
        raise ValueError("unsupported")

    try:
        for st in tree.body:
            if not (isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name)):
                return None
            env[st.targets[0].id] = ev(st.value)
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    v = env.get("ans")
    return None if v is None or math.isnan(v) or math.isinf(v) else v


# --------------------------------------------------------------------------- math rule
_MATH_CUES_ZH = re.compile(r"计算(?!机|出的|方法|公式|口径|基础|依据|规则)|算出|求出|求得|试求|金融数学|精算|多少(?:元|万元|亿元|美元)")
_MATH_CUES_EN = re.compile(r"\b(calculate|compute|how much|what (?:is|was) the (?:total|average|percent(?:age)?|ratio|change|difference|sum)|percentage change|growth rate)\b", re.I)
_BLANK_UNIT = re.compile(r"[（(]\s*[）)]\s*(?:万元|亿元|元|美元|%|％|年|次|天|倍|万股|股)")
_NUM = re.compile(r"\d+(?:\.\d+)?")
_NUMERIC_OPTION = re.compile(r"^[+-]?\d[\d,]*(?:\.\d+)?\s*(?:%|％|万元|亿元|元|美元|万|亿|倍|次|天|年|股|个)?$")


def is_math(question: str, choices: dict[str, str] | None, answer_type: str, subject: str = "") -> bool:
    """The ``math_reasoning`` rule for sources that mix math and non-math items.

    True when the answer is ``numeric``; or the subject is 精算/金融数学; or the text asks for a
    calculation (计算/求出/试求/... , ``calculate``/``how much``/``percentage change`` ...); or the
    question carries at least two numbers and either every option is a number (with an optional
    unit) or the blank asks for a quantity (``（）万元``). ``label`` and ``code`` items are never math.
    In texts over 400 characters the cue words count only in the first and last 200 characters
    (where instructions sit), not inside quoted news or reports.
    """
    if answer_type == "numeric":
        return True
    if answer_type in ("label", "code"):
        return False
    if re.search(r"精算|金融数学", subject or ""):
        return True
    q = question or ""
    # Cues count in the instruction parts only (head and tail), not inside long quoted news bodies.
    cue_text = q if len(q) <= 400 else q[:200] + "\n" + q[-200:]
    if _MATH_CUES_ZH.search(cue_text) or _MATH_CUES_EN.search(cue_text):
        return True
    if len(_NUM.findall(q)) >= 2:
        if choices and all(_NUMERIC_OPTION.match(v.strip()) for v in choices.values()):
            return True
        if _BLANK_UNIT.search(q):
            return True
    return False
