"""Answer extraction from model output.

Rules:

- When the text has a think block, the answer is the part after ``</think>``. The think block is
  used only when that part is empty (a model that put everything inside the block).
- Inside the chosen part, the **last** ``\\boxed{...}`` wins (nested braces handled; ``\\fbox``
  too). Without one, final-answer phrases are tried, last occurrence first: ``答案是``,
  ``最终答案``, ``the answer is``, ``final answer``, and a bold ``**B**``.
- Nothing found: ``None``. The verifier then decides whether the bare answer text is usable.
"""
from __future__ import annotations

import re

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# final-answer phrases; the captured value runs to the end of the line / sentence
_PHRASE_RES = [
    re.compile(r"(?:最终答案|最终的答案|正确答案|答案)\s*(?:应该|应当)?\s*(?:是|为|选|：|:)\s*[:：]?\s*([^\n]+)"),
    re.compile(r"(?i)(?:the\s+)?final\s+answer\s*(?:is|:)\s*:?\s*([^\n]+)"),
    re.compile(r"(?i)the\s+(?:correct\s+)?answer\s+(?:is|would\s+be|should\s+be)\s*:?\s*([^\n]+)"),
    re.compile(r"(?i)\banswer\s*:\s*([^\n]+)"),
]
_BOLD_RE = re.compile(r"\*\*([^*\n]{1,80})\*\*")
_TRAIL = " \t\r\n。.，,；;！!：:】》\"'“”‘’*$"  # brackets kept: "(1,234)" is a negative number
_LEAD = " \t\r\n：:【《\"'“”‘’*$"


def split_think(text: str | None) -> tuple[str, str]:
    """Split a completion into ``(reasoning, answer)``.

    ``<think>R</think>A`` -> (R, A); ``<think>R`` (never closed) -> (R, ""); no tags -> ("", text).
    A missing opening tag (the forced prefix is often not part of the returned text) is fine.
    """
    if not text:
        return "", ""
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        head = text[:close]
        opn = head.find(THINK_OPEN)
        reasoning = head[opn + len(THINK_OPEN):] if opn >= 0 else head
        return reasoning.strip(), text[close + len(THINK_CLOSE):].strip()
    opn = text.find(THINK_OPEN)
    if opn >= 0:
        return text[opn + len(THINK_OPEN):].strip(), ""
    return "", text.strip()


def _brace_pairs(text: str) -> dict[int, int]:
    """Index of each unescaped ``{`` -> index of its matching ``}`` (one linear pass)."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    j, n = 0, len(text)
    while j < n:
        c = text[j]
        if c == "{":
            stack.append(j)
        elif c == "}":
            if stack:
                pairs[stack.pop()] = j
        elif c == "\\" and j + 1 < n and text[j + 1] in "{}":
            j += 1  # escaped brace
        j += 1
    return pairs


def boxed_contents(text: str) -> list[str]:
    """All ``\\boxed{...}`` contents in order, with nested braces balanced. Unclosed boxes are skipped.
    Linear in the text length (braces are matched once, not rescanned per box)."""
    out: list[str] = []
    if "box" not in text:
        return out
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    if not starts:
        return out
    pairs = _brace_pairs(text[starts[0] - 1:])
    off = starts[0] - 1
    for i in starts:
        close = pairs.get(i - 1 - off)
        if close is not None:
            out.append(text[i:close + off])
    return out


def last_boxed(text: str) -> str | None:
    b = boxed_contents(text)
    return b[-1] if b else None


def _clean(s: str) -> str:
    s = s.strip()
    s = s.strip(_TRAIL).strip(_LEAD).strip()
    return s


def _from_phrases(text: str) -> str | None:
    best: tuple[int, str] | None = None
    for rx in _PHRASE_RES:
        for m in rx.finditer(text):
            val = _clean(m.group(1))
            if val and (best is None or m.start() > best[0]):
                best = (m.start(), val)
        if best is not None:
            break  # phrases are in priority order (zh, final answer, the answer is, answer:)
    if best is not None:
        val = best[1]
        # "答案是 **B**" -> B ; "答案是B，因为..." -> cut at the first clause break
        bm = _BOLD_RE.search(val)
        if bm:
            return _clean(bm.group(1)) or None
        val = re.split(r"[，,。；;]\s*(?:因为|because|since|所以|故)", val)[0]
        return _clean(val) or None
    bolds = _BOLD_RE.findall(text)
    if bolds:
        return _clean(bolds[-1]) or None
    return None


def _extract_from(part: str) -> str | None:
    if not part:
        return None
    b = last_boxed(part)
    if b is not None:
        b = b.strip()
        return b if b else None
    return _from_phrases(part)


def extract_answer(text: str | None) -> str | None:
    """The final answer of a model output, or None when no boxed value or answer phrase is found."""
    if not text:
        return None
    reasoning, answer = split_think(text)
    if answer:
        got = _extract_from(answer)
        if got is not None:
            return got
        return None
    return _extract_from(reasoning)


def answer_part(text: str | None) -> str:
    """The part of the output that holds the answer: after ``</think>``, else the think block."""
    reasoning, answer = split_think(text or "")
    return answer if answer else reasoning
