"""The rule verifier: a three-valued verdict on (gold, prediction).

``verify(gold, prediction, answer_type=None, question=None, rel_tol=0.01) -> Verdict``

- ``correct`` / ``incorrect``: the rules decided.
- ``unknown``: the rules cannot decide; the row goes to the answer judge.

Principles (docs/ARCHITECTURE.md, "Fin-R1 specifics"):

- An unparseable or empty gold answer is ``unknown``, **never** ``correct`` (open-r1's early
  accuracy reward scored those as correct).
- An empty prediction is ``incorrect``.
- Free text (and code) is ``correct`` only on an exact normalized match, otherwise ``unknown``.
- When ``answer_type`` is None it is inferred from the gold answer.

Gold answers arrive normalized by ingest (option letters sorted and joined ``"DE"``,
``"true"``/``"false"``, label names, decimal strings, free text) but raw forms are accepted too
(``"B、煤炭"``, ``'["D"; "E"]'``, ``"B; D"``, ``"A、错"``, ``"14.1%"``, ``"$ 1,234"``...).

The hot path is plain ``re`` + ``float``; math-verify is called only when cheap numeric parsing of
a LaTeX-looking value fails, and then with a hard time bound (:mod:`finr1_core.mathguard`: a
guarded parse, then a killable worker process): a timeout gives ``unknown`` with a reason starting
``timeout``. Numbers too large for a float give ``unknown`` (``number out of range``).
"""
from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import asdict, dataclass

from .extract import answer_part, extract_answer
from .mathguard import has_factorial, math_verify

ANSWER_TYPES = ("mcq_single", "mcq_multi", "true_false", "numeric", "label", "free_text", "code")
CORRECT, INCORRECT, UNKNOWN = "correct", "incorrect", "unknown"


@dataclass(frozen=True)
class Verdict:
    verdict: str  # correct | incorrect | unknown
    extracted: str | None
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# text normalisation
# --------------------------------------------------------------------------------------------
_FW = {i: i - 0xFEE0 for i in range(0xFF01, 0xFF5F)}  # full-width ASCII -> ASCII
_FW[0x3000] = 0x20
_FW.update({ord("（"): ord("("), ord("）"): ord(")")})


def _fw(s: str) -> str:
    return s.translate(_FW)


_LATEX_WRAP = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|operatorname|mbox|textit|emph)\s*\{([^{}]*)\}")
_LATEX_MISC = re.compile(r"\\[,;:! ]|\\quad|\\qquad|\\left|\\right|\\displaystyle")


def _strip_latex(s: str) -> str:
    if "\\" in s:
        for _ in range(3):
            s2 = _LATEX_WRAP.sub(r"\1", s)
            if s2 == s:
                break
            s = s2
        s = _LATEX_MISC.sub("", s)
        s = s.replace("\\%", "%").replace("\\$", "$")
    if "$" in s and s.count("$") >= 2:
        s = s.replace("$$", "").strip()
        if s.startswith("$") and s.endswith("$"):
            s = s[1:-1]
    return s.strip()


_NORM_DROP = re.compile(r"[\s\u3000,，。.、;；:：!！?？\"'“”‘’`*()（）\[\]【】<>《》{}]+")


def normalize_text(s: str) -> str:
    """Normalization used for exact free-text matches: NFKC, casefold, drop spaces and punctuation."""
    s = unicodedata.normalize("NFKC", s)
    s = _strip_latex(s)
    return _NORM_DROP.sub("", s).casefold()


# --------------------------------------------------------------------------------------------
# option letters
# --------------------------------------------------------------------------------------------
_LET = "A-F"
_LETTER_LIST = re.compile(rf"^[\(\[]?([{_LET}])[\)\]]?(?:\s*(?:[、,，;；/|&+]|和|与|及|以及|and|\s)\s*[\(\[]?([{_LET}])[\)\]]?)*$")
_LETTER_RUN = re.compile(rf"^[{_LET}]{{1,6}}$")
_LEAD_LETTER = re.compile(rf"^[\(\[]?([{_LET}])[\)\]]?\s*(?:[、.．:：)\]]|\s)\s*\S")
_ANY_LETTER = re.compile(rf"[{_LET}]")
_OPTION_LINE = re.compile(rf"(?m)^\s*[\(\[]?([{_LET}])[\)\]]?\s*[、.．:：)]\s*(.+?)\s*$")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_CHOICE_WORDS = re.compile(r"(?i)\b(?:options?|choices?|answers?|is|are|the|correct|final)\b")


def parse_letters(s: str, *, loose: bool = False) -> str | None:
    """Option letters as a sorted, de-duplicated string (``"BD"``), or None.

    Accepts ``B``, ``(B)``, ``\\text{D}``, ``B、煤炭``, ``D. text``, ``A、B、D``, ``B; D``,
    ``["D"; "E"]``, ``A B``, ``ABD``, ``A、所得税费用; B、毛利; D、利息``. With ``loose`` also
    ``选B``, ``B选项``, ``option B`` (only when nothing else but letters remains).
    """
    s = _strip_latex(_fw(s)).strip()
    if not s:
        return None
    # JSON-ish lists: ["D"; "E"], ['A', 'B']
    if s[0] == "[" and s[-1] == "]":
        inner = s[1:-1].replace('"', " ").replace("'", " ")
        s = inner.strip()
    s = s.strip(" .。*\"'")
    if not s:
        return None
    m = _LETTER_LIST.match(s)
    if m:
        return "".join(sorted(set(_ANY_LETTER.findall(s))))
    if _LETTER_RUN.match(s):
        return "".join(sorted(set(s)))
    # "A、text; B、text" / "D. text" / "B、煤炭"
    parts = re.split(r"\s*[;；]\s*|\n+", s)
    letters = []
    for p in parts:
        if not p:
            continue
        lm = _LEAD_LETTER.match(p)
        if not lm:
            letters = []
            break
        letters.append(lm.group(1))
    if letters:
        return "".join(sorted(set(letters)))
    if loose:
        rest = _NON_ASCII.sub(" ", s)
        rest = _CHOICE_WORDS.sub(" ", rest)
        rest = re.sub(r"[\s:：,.;、()\[\]\"'*]+", " ", rest).strip()
        if rest and len(rest) <= 16:
            m = _LETTER_LIST.match(rest)
            if m:
                return "".join(sorted(set(_ANY_LETTER.findall(rest))))
            if _LETTER_RUN.match(rest):
                return "".join(sorted(set(rest)))
    return None


def options_from_question(question: str | None) -> dict[str, str]:
    """``{"A": "社会保障税", ...}`` from option lines in a question (``A、…``, ``B. …``, ``(C) …``)."""
    if not question:
        return {}
    return {m.group(1): m.group(2) for m in _OPTION_LINE.finditer(_fw(question))}


# --------------------------------------------------------------------------------------------
# true / false
# --------------------------------------------------------------------------------------------
_TRUE_WORDS = {"true", "yes", "是", "对", "正确", "√", "✓", "✔", "correct", "right", "是的", "对的"}
_FALSE_WORDS = {"false", "no", "否", "错", "错误", "×", "✗", "✘", "incorrect", "wrong", "不是", "不对", "不正确", "错的"}
_NEG_RE = re.compile(r"不正确|不对|不是|错误|\bfalse\b|\bno\b|\bincorrect\b|\bwrong\b|否|错|×")
_POS_RE = re.compile(r"正确|对|是|\btrue\b|\byes\b|\bcorrect\b|\bright\b|√")
_TF_LEAD = re.compile(r"^(yes|no|true|false|不正确|不对|不是|正确|错误|是|否|对|错)\s*[,.，。;；!！:：]")
_TF_LETTER = re.compile(r"^[\(\[]?([A-F])[\)\]]?\s*[、.．:：)\s]\s*(.+)$")


def parse_bool(s: str, *, loose: bool = False) -> bool | None:
    s0 = _strip_latex(_fw(s)).strip().strip(" .。!！*\"'").casefold()
    if not s0:
        return None
    if s0 in _TRUE_WORDS:
        return True
    if s0 in _FALSE_WORDS:
        return False
    lm = _TF_LEAD.match(s0)
    if lm:  # "Yes, it is greater." / "不正确，因为…"
        return lm.group(1) in _TRUE_WORDS if lm.group(1) in _TRUE_WORDS or lm.group(1) in _FALSE_WORDS else None
    m = _TF_LETTER.match(s0.upper()) if len(s0) <= 8 else None
    if m:
        return parse_bool(m.group(2))
    if loose and len(s0) <= 16:
        neg = _NEG_RE.search(s0) is not None
        pos = _POS_RE.search(_NEG_RE.sub(" ", s0)) is not None
        if neg != pos:
            return pos
    return None


def _tf_letter_alias(s: str) -> str | None:
    m = _TF_LETTER.match(_fw(s).strip().upper())
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------
_LABELS = {
    "bearish": "negative", "negative": "negative", "消极": "negative", "负面": "negative", "利空": "negative",
    "bullish": "positive", "positive": "positive", "积极": "positive", "正面": "positive", "利好": "positive",
    "neutral": "neutral", "中性": "neutral", "中立": "neutral",
}
_LABEL_RE = re.compile("|".join(sorted((re.escape(k) for k in _LABELS), key=len, reverse=True)), re.I)


_NEGATION = re.compile(r"\b(?:not|no|never|neither|nor|isn't|aren't|wasn't)\b|n't\b|不|非|没有|无", re.I)
_SENTENCE_END = re.compile(r"[.!?。！？;；\n]")


def parse_label(s: str, *, loose: bool = False) -> str | None:
    """A sentiment label (negative / positive / neutral) or None. ``loose`` also reads one label
    named in a short text ("The sentiment is neutral"): up to 40 characters, or one sentence of at
    most 120 without a negation ("The sentiment of this financial tweet is Bullish."). A text naming
    two labels, or negating one, gives None."""
    s0 = _strip_latex(_fw(s)).strip().strip(" .。!！*\"'()（）").casefold()
    if s0 in _LABELS:
        return _LABELS[s0]
    if loose and (len(s0) <= 40 or (len(s0) <= 120 and not _SENTENCE_END.search(s0) and not _NEGATION.search(s0))):
        found = {_LABELS[m.group(0).casefold()] for m in _LABEL_RE.finditer(s0)}
        if len(found) == 1:
            return found.pop()
    return None


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------
_UNIT_MULT = {
    "万亿": 1e12, "千亿": 1e11, "百亿": 1e10, "十亿": 1e9, "亿": 1e8, "千万": 1e7, "百万": 1e6, "十万": 1e5,
    "万": 1e4, "千": 1e3, "百": 1e2,
    "trillion": 1e12, "billion": 1e9, "bn": 1e9, "million": 1e6, "mn": 1e6, "mm": 1e6, "thousand": 1e3,
}
_UNIT_RE_S = "|".join(sorted((re.escape(k) for k in _UNIT_MULT), key=len, reverse=True))
_CURRENCY = r"(?:US\$|HK\$|RMB|CNY|USD|HKD|EUR|人民币|美元|港元|港币|欧元|日元|英镑|元|块|[$¥￥€£])"
_NUM_CORE = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?"
_NUM_FULL = re.compile(
    rf"^\s*(?P<neg1>[-−–+]?)\s*{_CURRENCY}?\s*(?P<neg2>[-−–]?)\s*(?P<num>{_NUM_CORE})\s*"
    rf"(?:(?:\\times|×|x|\*)\s*10\s*\^\s*\{{?\s*(?P<exp>[-−]?\d+)\s*\}}?)?\s*"
    rf"(?P<unit>{_UNIT_RE_S})?\s*(?:{_CURRENCY}|dollars?|yuan|shares?|股|个|份|点|次|人|年|days?|天|倍|times)?\s*"
    rf"(?P<pct>%|％|percent|per\s*cent|个百分点|percentage\s+points?|pp|bps|basis\s+points?)?\s*$",
    re.I,
)
_NUM_PAREN = re.compile(r"^\s*\(\s*([^()]+?)\s*\)\s*$")
_FRAC = re.compile(r"^\s*(-?)\\[dt]?frac\s*\{\s*([-\d.]+)\s*\}\s*\{\s*([-\d.]+)\s*\}\s*(%?)\s*$")
_SLASH = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")
_NUM_TOKEN = re.compile(rf"[-−]?\s*{_CURRENCY}?\s*(?:{_NUM_CORE})\s*(?:{_UNIT_RE_S})?\s*(?:%|％)?", re.I)
_APPROX = re.compile(r"^(?:约|大约|约为|近|approximately|approx\.?|about|around|roughly|≈|~|=)\s*", re.I)
_SUBJECT_EQ = re.compile(r"^[^=<>]{0,40}?(?:=|≈|为|是|is|was|equals|of)\s*(?=[-−$¥￥€£(（\d.])", re.I)


@dataclass(frozen=True)
class Num:
    value: float  # value with unit multiplier applied; percent NOT applied
    pct: bool  # carried a percent sign (value is in percent units)
    unit: float  # unit multiplier (1.0 when none)
    raw: float  # bare number, before unit multiplier


def _num_match(s: str) -> Num | None:
    neg = False
    pm = _NUM_PAREN.match(s)
    if pm:  # accounting negative: (1,234)
        inner = _num_match(pm.group(1))
        if inner is None:
            return None
        return Num(-inner.value, inner.pct, inner.unit, -inner.raw)
    m = _NUM_FULL.match(s)
    if not m:
        return None
    if (m.group("neg1") or "") in "-−–" and m.group("neg1"):
        neg = True
    if m.group("neg2"):
        neg = not neg
    try:
        raw = float(m.group("num").replace(",", ""))
    except ValueError:
        return None
    if m.group("exp"):
        e = m.group("exp").replace("−", "-")
        raw = raw * 10.0 ** int(e) if len(e) <= 4 and abs(int(e)) <= 400 else (math.inf if not e.startswith("-") else 0.0)
    unit = _UNIT_MULT.get((m.group("unit") or "").lower(), 1.0) if m.group("unit") else 1.0
    pct = bool(m.group("pct")) and m.group("pct").lower() not in ("bps", "basis point", "basis points")
    if m.group("pct") and m.group("pct").lower().startswith(("bps", "basis")):
        raw = raw / 100.0  # basis points -> percent
        pct = True
    if neg:
        raw = -raw
    return Num(raw * unit, pct, unit, raw)


def parse_number(s: str, *, loose: bool = False) -> Num | None:
    """Parse a number with currency, thousands separators, units, percent, parentheses negatives,
    ``\\frac{a}{b}``, ``a/b`` and ``1.2 \\times 10^{3}``. With ``loose``, also take the value after
    the last ``=`` or the single number of a short phrase (``约 13.4%``, ``净利润为3.2万元``)."""
    if s is None:
        return None
    s = _strip_latex(_fw(s)).replace("−", "-").replace("\u2009", "").replace("\u00a0", " ").strip()
    s = s.rstrip("。.;；!！ ").strip()
    if not s:
        return None
    n = _num_match(s)
    if n is not None:
        return n
    fm = _FRAC.match(s)
    if fm:
        try:
            v = float(fm.group(2)) / float(fm.group(3))
        except (ValueError, ZeroDivisionError):
            return None
        v = -v if fm.group(1) else v
        return Num(v, bool(fm.group(4)), 1.0, v)
    sm = _SLASH.match(s)
    if sm:
        try:
            v = float(sm.group(1)) / float(sm.group(2))
        except ZeroDivisionError:
            return None
        return Num(v, False, 1.0, v)
    if not loose:
        return None
    t = _APPROX.sub("", s)
    if t != s:
        n = parse_number(t)
        if n is not None:
            return n
    if "=" in s or "≈" in s:
        tail = re.split(r"=|≈", s)[-1]
        n = parse_number(tail)
        if n is not None:
            return n
    if len(s) <= 60:
        toks = _NUM_TOKEN.findall(s)
        if len(toks) == 1:
            return parse_number(toks[0])
        sm2 = _SUBJECT_EQ.match(s)
        if sm2:
            n = parse_number(s[sm2.end():])
            if n is not None:
                return n
    return None


_SCALES = (100.0, 1e3, 1e4, 1e6, 1e8, 1e9)


def _close(a: float, b: float, rel_tol: float) -> bool:
    if a == b:
        return True
    scale = max(abs(a), abs(b))
    return abs(a - b) <= rel_tol * scale + 1e-12


def compare_numbers(gold: Num, pred: Num, rel_tol: float) -> tuple[str, str]:
    """(verdict, reason). Equivalences: 0.2 == 20% when one side carries %, a unit on one side
    only may be the question's unit (46 == 46万元), rounding within ``rel_tol``."""
    if not (math.isfinite(gold.value) and math.isfinite(pred.value)):
        return UNKNOWN, "number out of range"
    g_vals = [gold.value / 100.0] if gold.pct else [gold.value]
    p_vals = [pred.value / 100.0] if pred.pct else [pred.value]
    if gold.pct != pred.pct:  # 0.2 vs 20%: also compare the bare numbers (20% vs "20")
        g_vals.append(gold.value)
        p_vals.append(pred.value)
    if gold.unit != pred.unit:  # 3.2 (万元 in the question) vs 3.2万元
        g_vals.append(gold.raw)
        p_vals.append(pred.raw)
    for g in g_vals:
        for p in p_vals:
            if _close(g, p, rel_tol):
                return CORRECT, "numeric match"
    # an off-by-a-scale or sign-only difference is not a clear deviation: the question may ask
    # "in millions" or "in percent", or "decrease of 11%" vs gold -0.11. Let the judge decide.
    for g in g_vals:
        for p in p_vals:
            if g == 0 or p == 0:
                continue
            if _close(abs(g), abs(p), rel_tol):
                return UNKNOWN, "numeric match up to sign"
            r = abs(p / g)
            for sc in _SCALES:
                if _close(r, sc, rel_tol) or _close(r, 1.0 / sc, rel_tol):
                    return UNKNOWN, f"numeric match up to a factor of {sc:g}"
    return INCORRECT, "numeric mismatch"


_LATEXY = re.compile(r"\\(?:d?t?frac|sqrt|times|cdot|pi|left|right)|\^|\\exp|e\^")


# --------------------------------------------------------------------------------------------
# type inference and gold parsing
# --------------------------------------------------------------------------------------------
def infer_answer_type(gold: str) -> str:
    g = gold.strip()
    if not g:
        return "free_text"
    if parse_bool(g) is not None:
        return "true_false"
    if parse_label(g) is not None:
        return "label"
    letters = parse_letters(g)
    if letters:
        return "mcq_multi" if len(letters) > 1 else "mcq_single"
    if parse_number(g) is not None:
        return "numeric"
    if _LATEXY.search(g):
        return "numeric"
    return "free_text"


def _type_family(t: str) -> str:
    if t in ("mcq_single", "mcq_multi", "mcq"):
        return "mcq"
    if t in ("true_false", "bool", "boolean", "yes_no"):
        return "tf"
    if t in ("numeric", "number", "float", "int"):
        return "num"
    if t in ("label", "sentiment", "class"):
        return "label"
    if t == "code":
        return "code"
    return "text"


# --------------------------------------------------------------------------------------------
# the verifier
# --------------------------------------------------------------------------------------------
def _as_text(x) -> str:
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float) and math.isnan(x):
        return ""
    if isinstance(x, (list, tuple)):
        return json.dumps(list(x), ensure_ascii=False)
    return str(x)


def candidate_answer(prediction: str) -> tuple[str | None, str]:
    """(extracted, usable text). ``extracted`` is the boxed / phrase answer or None; the usable text
    falls back to the answer part of the output when nothing was extracted."""
    ex = extract_answer(prediction)
    if ex is not None:
        return ex, ex
    return None, answer_part(prediction)


@dataclass(frozen=True)
class _Case:
    """One comparison: the gold text, the candidate answer and how it was found."""

    gold: str
    cand: str
    fallback: bool  # no boxed/phrase answer: the candidate is the bare text, parsed strictly
    shown: str | None  # what the verdict reports as the extracted answer
    atype: str
    question: str | None
    rel_tol: float


def verify(gold, prediction, answer_type: str | None = None, question: str | None = None,
           rel_tol: float = 0.01) -> Verdict:
    """Three-valued rule verdict. See the module docstring for the rules."""
    gold_s = _as_text(gold).strip()
    pred_s = _as_text(prediction)
    if not gold_s or gold_s.lower() in ("none", "null", "nan"):
        return Verdict(UNKNOWN, extract_answer(pred_s) if pred_s.strip() else None, "gold answer empty")
    if not pred_s.strip():
        return Verdict(INCORRECT, None, "empty prediction")
    extracted, cand = candidate_answer(pred_s)
    # boxed/phrase answers are trusted as answers; a bare fallback text is parsed strictly (short)
    # or loosely only when it is short enough to be "just the answer"
    cand = cand.strip()
    if not cand:
        return Verdict(INCORRECT, None, "empty answer")
    atype = answer_type or infer_answer_type(gold_s)
    shown = extracted if extracted is not None else (cand if len(cand) <= 200 else None)
    c = _Case(gold_s, cand, extracted is None, shown, atype, question, rel_tol)
    by_family = {"mcq": _verify_mcq, "tf": _verify_tf, "label": _verify_label, "num": _verify_num}
    fn = by_family.get(_type_family(atype))
    if fn is not None:
        return fn(c)
    # free text and code: exact normalized match or unknown
    if normalize_text(gold_s) == normalize_text(cand) and normalize_text(cand):
        return Verdict(CORRECT, shown, "exact normalized match")
    return Verdict(UNKNOWN, shown, f"{atype}: not decidable by rule")


def _verify_mcq(c: _Case) -> Verdict:
    g = parse_letters(c.gold) or parse_letters(c.gold, loose=True)
    if not g:
        return Verdict(UNKNOWN, c.shown, f"gold not parseable as {c.atype}")
    p = parse_letters(c.cand) or (parse_letters(c.cand, loose=True) if (not c.fallback or len(c.cand) <= 40) else None)
    if p is None:
        opts = options_from_question(c.question)
        if opts:
            key = normalize_text(c.cand)
            hits = [k for k, v in opts.items() if key and normalize_text(v) == key]
            if len(hits) == 1:
                p = hits[0]
    if p is None:
        return Verdict(UNKNOWN, c.shown, "prediction has no option letters")
    return Verdict(CORRECT if p == g else INCORRECT, p, "options match" if p == g else f"options differ ({p} vs {g})")


def _verify_tf(c: _Case) -> Verdict:
    g = parse_bool(c.gold)
    alias = _tf_letter_alias(c.gold)
    if g is None:
        return Verdict(UNKNOWN, c.shown, f"gold not parseable as {c.atype}")
    p = parse_bool(c.cand, loose=not c.fallback or len(c.cand) <= 16)
    if p is None and alias is not None:
        pl = parse_letters(c.cand)
        if pl and len(pl) == 1:
            return Verdict(CORRECT if pl == alias else INCORRECT, pl, "option letter of true/false gold")
    if p is None:
        return Verdict(UNKNOWN, c.shown, "prediction has no true/false value")
    ok = p == g
    return Verdict(CORRECT if ok else INCORRECT, "true" if p else "false", "true/false match" if ok else "true/false differ")


def _verify_label(c: _Case) -> Verdict:
    g = parse_label(c.gold)
    if g is None:
        if normalize_text(c.gold) == normalize_text(c.cand):
            return Verdict(CORRECT, c.shown, "exact normalized match")
        return Verdict(UNKNOWN, c.shown, f"gold not a known label ({c.gold[:40]})")
    p = parse_label(c.cand, loose=True) if not c.fallback or len(c.cand) <= 120 else None
    if p is None:
        return Verdict(UNKNOWN, c.shown, "prediction has no label")
    return Verdict(CORRECT if p == g else INCORRECT, p, "label match" if p == g else f"labels differ ({p} vs {g})")


def _verify_num(c: _Case) -> Verdict:
    g = parse_number(c.gold) or parse_number(c.gold, loose=True)
    if g is None:
        return _verify_unparsed_numeric_gold(c)
    symbolic = has_factorial(c.cand) and not c.fallback
    p = None if symbolic else parse_number(c.cand, loose=not c.fallback or len(c.cand) <= 60)
    if p is None and (symbolic or _LATEXY.search(c.cand)):
        mv, val, problem = math_verify(c.gold, c.cand)
        if problem and problem.startswith("timeout"):
            return Verdict(UNKNOWN, c.shown, problem)
        if mv:
            return Verdict(CORRECT, c.shown, "math-verify match")
        if val is not None and math.isfinite(val):
            v, why = compare_numbers(g, Num(val, False, 1.0, val), c.rel_tol)
            return Verdict(v, c.shown, f"math-verify value: {why}")
        if mv is False:
            return Verdict(UNKNOWN, c.shown, "math-verify no match (left to the judge)")
    if p is None:
        if parse_bool(c.gold) is None and parse_bool(c.cand) is not None:
            return Verdict(INCORRECT, c.shown, "yes/no answer to a numeric question")
        return Verdict(UNKNOWN, c.shown, "prediction has no single number")
    v, why = compare_numbers(g, p, c.rel_tol)
    return Verdict(v, c.shown, why)


def _verify_unparsed_numeric_gold(c: _Case) -> Verdict:
    """A numeric gold the number parser cannot read (LaTeX): math-verify, else exact text."""
    if _LATEXY.search(c.gold):
        mv, _, problem = math_verify(c.gold, c.cand)
        if mv is True:
            return Verdict(CORRECT, c.shown, "math-verify match")
        if problem and problem.startswith("timeout"):
            return Verdict(UNKNOWN, c.shown, problem)
    if normalize_text(c.gold) == normalize_text(c.cand):
        return Verdict(CORRECT, c.shown, "exact normalized match")
    return Verdict(UNKNOWN, c.shown, f"gold not parseable as {c.atype}")


# --------------------------------------------------------------------------------------------
# JSONL rescoring (the `finr1 verify` command)
# --------------------------------------------------------------------------------------------
class BadLine(ValueError):
    """A JSONL line that cannot be verified; ``str()`` is one line naming the line number."""

    def __init__(self, line_no: int, msg: str):
        super().__init__(f"line {line_no}: {msg}")
        self.line_no = line_no


def verify_record(obj: dict, rel_tol: float = 0.01) -> dict:
    """The row plus ``verdict`` and ``extracted`` (and ``verify_reason``)."""
    v = verify(obj.get("gold"), obj.get("prediction"), obj.get("answer_type") or None, obj.get("question"), rel_tol)
    return {**obj, "verdict": v.verdict, "extracted": v.extracted, "verify_reason": v.reason}


def _check_line(line_no: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadLine(line_no, f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise BadLine(line_no, f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("gold", "prediction") if k not in obj]
    if missing:
        raise BadLine(line_no, f"missing field(s): {', '.join(missing)}")
    at = obj.get("answer_type")
    if at is not None and at not in ANSWER_TYPES:
        raise BadLine(line_no, f"answer_type {at!r} is not one of {', '.join(ANSWER_TYPES)}")
    for k in ("question",):
        if obj.get(k) is not None and not isinstance(obj[k], str):
            raise BadLine(line_no, f"{k} must be a string")
    return obj


def verify_lines(lines, rel_tol: float = 0.01, skip_bad: bool = False):
    """Yield output rows for JSONL lines (blank lines are skipped).

    A bad line raises :class:`BadLine` (one line, with its number), unless ``skip_bad``: then it is
    passed through as ``{"line": N, "error": ..., "verdict": "unknown", "extracted": null}`` (the
    original object's fields are kept when the line was a JSON object).
    """
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = _check_line(n, line)
        except BadLine as e:
            if not skip_bad:
                raise
            try:
                base = json.loads(line)
                base = base if isinstance(base, dict) else {"input": base}
            except json.JSONDecodeError:
                base = {"input": line.rstrip("\n")}
            yield {**base, "line": n, "error": str(e), "verdict": UNKNOWN, "extracted": None}
            continue
        yield verify_record(obj, rel_tol)
