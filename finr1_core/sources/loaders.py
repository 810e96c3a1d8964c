"""One converter per source: an upstream row -> the fields of a normalized record.

Each converter returns ``question``, ``choices``, ``answer``, ``answer_raw``, ``answer_type``
and optionally ``language``, ``module``, ``math_reasoning``, ``subject`` (for the math rule),
``meta`` (extra notes) and ``consumed`` (upstream keys copied verbatim into the columns, so they
are not repeated in ``meta``). A row that cannot be loaded raises :class:`Skip` with the reason.
"""
from __future__ import annotations

import ast
import html
import json
import re
from pathlib import Path
from typing import Any

from ..records import MODULES
from .base import RowCtx
from .parse import (
    Skip,
    choice_answer,
    choices_from_columns,
    eval_program,
    final_number,
    get_text,
    html_tables_to_markdown,
    is_missing,
    parse_option_lines,
    parse_tf,
    pipe_table_to_markdown,
    raw_str,
    table_to_markdown,
    tf_str,
    to_decimal_str,
)

CODE, KNOWLEDGE, NON_REASONING, REASONING = MODULES


def _dict(row: Any) -> dict:
    if not isinstance(row, dict):
        raise Skip(f"wrong type: row is {type(row).__name__}, expected an object")
    return row


def _first_present(row: dict, *keys: str) -> tuple[str | None, Any]:
    for k in keys:
        if k in row and not is_missing(row[k]):
            return k, row[k]
    return None, None


def _numeric_or_tf(value: Any, what: str) -> tuple[str, str]:
    """(answer, answer_type) for a gold that is a number or yes/no."""
    if isinstance(value, str):
        tf = parse_tf(value)
        if tf is not None:
            return tf_str(tf), "true_false"
    num = to_decimal_str(value)
    if num is not None:
        return num, "numeric"
    raise Skip(f"unparseable answer {raw_str(value)[:60]!r} in {what} (expected a number or yes/no)")


def _join_text(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, str):
        return x.strip()
    if isinstance(x, list):
        return " ".join(str(s).strip() for s in x if s is not None and str(s).strip())
    raise Skip(f"wrong type: text is {type(x).__name__}, expected text or a list of sentences")


# =========================================================================== FinQA
FINQA_INSTRUCTION = (
    "Read the following texts and table with financial data from an S&P 500 earnings report carefully, "
    "then answer the question. The answer may require mathematical calculation based on the data provided."
)


def finqa_matches(row: Any) -> bool:
    return isinstance(row, dict) and ("qa" in row or "question" in row) and ("pre_text" in row or "table" in row)


def finqa_convert(row: Any, ctx: RowCtx) -> dict:
    row = _dict(row)
    qa = row.get("qa")
    if qa is None:  # flattened hub layouts: question/answer at top level
        qa = {k: row[k] for k in ("question", "answer", "exe_ans", "final_result", "program") if k in row}
        flat = True
    else:
        flat = False
    if not isinstance(qa, dict):
        raise Skip(f"wrong type: qa is {type(qa).__name__}, expected an object")
    q = get_text(qa, "question", what="question")
    table = row.get("table") if row.get("table") is not None else row.get("table_ori")
    if table is not None and not (isinstance(table, list) and all(isinstance(r, list) for r in table)):
        raise Skip(f"wrong type: table is {type(table).__name__}, expected a list of rows")
    pre, post = _join_text(row.get("pre_text")), _join_text(row.get("post_text"))
    parts = [FINQA_INSTRUCTION, pre, table_to_markdown(table or []), post, f"Question: {q.strip()}"]
    question = "\n\n".join(p for p in parts if p)
    key, gold = _first_present(qa, "exe_ans", "final_result")
    note = {}
    if key is None:
        key, gold = _first_present(qa, "answer")
        if key is None:
            raise Skip("no gold answer (qa.exe_ans and qa.answer missing: unlabelled test row?)")
        note = {"answer_from": "qa.answer"}
    answer, atype = _numeric_or_tf(gold, f"qa.{key}")
    qa_rest = {k: v for k, v in qa.items() if k not in ("question", key)}
    consumed = ["pre_text", "post_text", "table"] + (["question", key] if flat else ["qa"])
    meta = dict(note)
    if not flat:
        meta["qa"] = qa_rest
    return dict(question=question, choices=None, answer=answer, answer_raw=raw_str(gold), answer_type=atype, consumed=consumed, meta=meta)


# =========================================================================== ConvFinQA
CONVFINQA_INSTRUCTION = (
    "Read the following texts and table with financial data from an S&P 500 earnings report carefully. "
    "Based on the question-answer history (if provided), answer the last question. "
    "The answer may require mathematical calculation based on the data provided."
)


def _convfinqa_original(row: dict) -> dict:
    """Original ConvFinQA json (``annotation.dialogue_break``/``exe_ans_list``): one record per
    conversation, asking its last turn with the earlier turns and their gold answers as history."""
    ann = row.get("annotation")
    if not isinstance(ann, dict):
        raise Skip(f"wrong type: annotation is {type(ann).__name__}, expected an object")
    turns, answers = ann.get("dialogue_break"), ann.get("exe_ans_list")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise Skip("no question (annotation.dialogue_break missing or empty)")
    if not isinstance(answers, list) or len(answers) != len(turns):
        raise Skip("no gold answer (annotation.exe_ans_list missing or not one per turn)")
    table = row.get("table") or row.get("table_ori") or []
    hist = "".join(f"Question: {t}\nAnswer: {to_decimal_str(a) or a}\n" for t, a in zip(turns[:-1], answers[:-1]))
    ctx_text = "\n\n".join(p for p in [_join_text(row.get("pre_text")), table_to_markdown(table), _join_text(row.get("post_text"))] if p)
    question = f"{CONVFINQA_INSTRUCTION}\n\n{ctx_text}\n\n{hist}Question: {turns[-1]}"
    answer, atype = _numeric_or_tf(answers[-1], "annotation.exe_ans_list[-1]")
    return dict(question=question, choices=None, answer=answer, answer_raw=raw_str(answers[-1]), answer_type=atype,
                consumed=["pre_text", "post_text", "table"], meta={"num_turns": len(turns)})


def convfinqa_matches(row: Any) -> bool:
    return isinstance(row, dict) and (("input" in row and ("output" in row or "instruction" in row)) or "annotation" in row)


def convfinqa_convert(row: Any, ctx: RowCtx) -> dict:
    row = _dict(row)
    if "annotation" in row:
        return _convfinqa_original(row)
    instr = get_text(row, "instruction", required=False) or CONVFINQA_INSTRUCTION
    inp = get_text(row, "input", what="question (input)")
    question = instr.strip() + "\n\n" + re.sub(r"\n{3,}", "\n\n", html_tables_to_markdown(inp)).strip()
    key, gold = _first_present(row, "output", "answer")
    if key is None:
        raise Skip("no gold answer (output missing or empty)")
    answer, atype = _numeric_or_tf(gold, key)
    return dict(question=question, choices=None, answer=answer, answer_raw=raw_str(gold), answer_type=atype,
                consumed=["instruction", "input", key])


def convfinqa_conv_matches(row: Any) -> bool:
    return isinstance(row, dict) and ("questions" in row or "annotation" in row)


def convfinqa_conv_convert(row: Any, ctx: RowCtx) -> dict:
    """PoT copy: ``questions`` (turns), ``answer`` (last turn), ``text``, ``table``, ``programs``.

    Earlier turns are shown with their answers computed from the per-turn ``programs`` (a safe
    arithmetic evaluator, no exec); if any of them cannot be evaluated, earlier turns are shown as
    questions only (``meta.history_answers = false``)."""
    row = _dict(row)
    if "annotation" in row:
        return _convfinqa_original(row)
    qs = row.get("questions")
    if not isinstance(qs, list) or not qs or not all(isinstance(q, str) and q.strip() for q in qs):
        raise Skip("no question (questions missing, empty or not a list of text)")
    if is_missing(row.get("answer")):
        raise Skip("no gold answer (answer missing)")
    answer, atype = _numeric_or_tf(row["answer"], "answer")
    progs = row.get("programs")
    hist_answers: list[str] | None = None
    if isinstance(progs, list) and len(progs) == len(qs):
        vals = [eval_program(p) if isinstance(p, str) else None for p in progs[:-1]]
        if all(v is not None for v in vals):
            hist_answers = [to_decimal_str(round(v, 5)) for v in vals]
    hist = ""
    for i, q in enumerate(qs[:-1]):
        hist += f"Question: {q}\n" + (f"Answer: {hist_answers[i]}\n" if hist_answers else "")
    text = _join_text(row.get("text"))
    table = row.get("table")
    table_md = pipe_table_to_markdown(table) if isinstance(table, str) else table_to_markdown(table or [])
    ctx_text = "\n\n".join(p for p in [text, table_md] if p)
    question = f"{CONVFINQA_INSTRUCTION}\n\n{ctx_text}\n\n{hist}Question: {qs[-1]}"
    return dict(question=question, choices=None, answer=answer, answer_raw=raw_str(row["answer"]), answer_type=atype,
                consumed=["text", "table", "answer"], meta={"history_answers": hist_answers is not None, "num_turns": len(qs)})


# =========================================================================== TFNS
TFNS_LABELS = {0: "Bearish", 1: "Bullish", 2: "Neutral"}
TFNS_NAMES = {"bearish": "Bearish", "bullish": "Bullish", "neutral": "Neutral", "negative": "Bearish", "positive": "Bullish"}
TFNS_QUESTION = "What is the sentiment of this financial tweet? Answer with one of: Bearish, Bullish, Neutral.\n\nTweet: {text}"


def tfns_matches(row: Any) -> bool:
    return isinstance(row, dict) and ("text" in row or "sentence" in row) and "label" in row


def tfns_convert(row: Any, ctx: RowCtx) -> dict:
    row = _dict(row)
    text = get_text(row, "text", "sentence", what="tweet text")
    gold = row.get("label")
    if is_missing(gold):
        raise Skip("no gold answer (label missing)")
    label = None
    if isinstance(gold, bool):
        label = None
    elif isinstance(gold, (int, float)) and float(gold).is_integer():
        label = TFNS_LABELS.get(int(gold))
    elif isinstance(gold, str):
        g = gold.strip()
        label = TFNS_LABELS.get(int(g)) if g.isdigit() else TFNS_NAMES.get(g.lower())
    if label is None:
        raise Skip(f"unparseable label {raw_str(gold)!r} (expected 0/1/2 or Bearish/Bullish/Neutral)")
    return dict(question=TFNS_QUESTION.format(text=text.strip()), choices=None, answer=label, answer_raw=raw_str(gold),
                answer_type="label", consumed=["text", "sentence", "label"])


# =========================================================================== FinCUGE
FINCUGE_FIELDS = {
    "finfe": ["text", "label"],
    "finqa": ["question", "answer"],
    "fincqa": ["question", "answer"],
    "finna": ["summary", "text"],
    "finre": ["head_entity", "tail_entity", "relation", "text"],
    "finnsp": ["id", "title", "text", "entity", "negative", "key_entity"],
    "finnl": ["text", "label"],
    "finese": ["id", "text", "event_type", "subject"],
}
FINFE_LABELS = {0: "消极", 1: "中性", 2: "积极"}


def fincuge_task_of(path: str) -> str | None:
    """The FinCUGE task named by a directory or the file name (``FinCUGE_Publish/finfe/train_list.json``)."""
    p = Path(path)
    for part in [p.stem.lower()] + [x.lower() for x in reversed(p.parent.parts)]:
        for t in FINCUGE_FIELDS:
            if part == t or part.startswith(t + "_") or part.startswith(t + "-") or part.endswith("_" + t):
                return t
    return None


def fincuge_matches(row: Any) -> bool:
    return isinstance(row, dict) and (row.get("task") in FINCUGE_FIELDS or ("instruction" in row and "output" in row))


def _fincuge_fields(row: Any, ctx: RowCtx) -> tuple[str, dict, list[str]]:
    if isinstance(row, list):
        task = ctx.task
        if task is None:
            raise Skip("FinCUGE positional row but the task is unknown (put the file under a <task>/ directory)")
        names = FINCUGE_FIELDS[task]
        if len(row) != len(names):
            if len(row) < len(names) and (ctx.split_hint == "test"):
                raise Skip(f"no gold answer (unlabelled FinCUGE {task} test row: {len(row)} fields, expected {len(names)})")
            raise Skip(f"FinCUGE {task} row has {len(row)} fields, expected {len(names)} ({', '.join(names)})")
        return task, dict(zip(names, row)), []
    task = row.get("task")
    names = FINCUGE_FIELDS[task]
    fields = {n: row.get(n) for n in names}
    consumed = [n for n in names if n in row and n != "id"]  # ids are not copied into columns: keep them in meta
    if any(n not in row for n in names) and isinstance(row.get("_raw"), list):
        if len(row["_raw"]) != len(names):
            raise Skip(f"FinCUGE {task} _raw has {len(row['_raw'])} fields, expected {len(names)}")
        fields, consumed = dict(zip(names, row["_raw"])), []
    return task, fields, consumed


def _s(fields: dict, name: str, task: str, required: bool = True) -> str:
    v = fields.get(name)
    if isinstance(v, list) and name in ("answer", "subject", "key_entity") and all(isinstance(x, str) for x in v):
        v = "、".join(x.strip() for x in v if x.strip())  # span lists (finqa/fincqa answers)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and name in ("label", "negative", "id"):
        return str(v)
    if is_missing(v):
        if required:
            raise Skip(f"no {name} in FinCUGE {task} row")
        return ""
    if not isinstance(v, str):
        raise Skip(f"wrong type: {name} is {type(v).__name__}, expected text")
    return v.strip()


def fincuge_convert(row: Any, ctx: RowCtx) -> dict:
    if isinstance(row, dict) and row.get("task") not in FINCUGE_FIELDS:  # instruction-style conversion
        q = get_text(row, "instruction", what="instruction")
        inp = get_text(row, "input", required=False)
        ans = get_text(row, "output", what="gold answer (output)", allow_numbers=True)
        return dict(question=q.strip() + ("\n" + inp.strip() if inp else ""), choices=None, answer=ans.strip(),
                    answer_raw=ans, answer_type="free_text", consumed=["instruction", "input", "output"])
    task, f, consumed = _fincuge_fields(row, ctx)
    raw_ans: Any
    if task == "finfe":
        text = _s(f, "text", task)
        raw_ans = f.get("label")
        lab = None
        if isinstance(raw_ans, int) and not isinstance(raw_ans, bool):
            lab = FINFE_LABELS.get(raw_ans)
        elif isinstance(raw_ans, str):
            r = raw_ans.strip()
            lab = FINFE_LABELS.get(int(r)) if r.isdigit() else (r if r in FINFE_LABELS.values() else None)
        if lab is None:
            raise Skip(f"unparseable finfe label {raw_str(raw_ans)!r} (expected 0/1/2)")
        q = f"请判断以下金融社交媒体文本的情感倾向，从“消极”“中性”“积极”中选择一个作答。\n文本：{text}"
        ans, atype = lab, "label"
    elif task in ("finqa", "fincqa"):
        q = _s(f, "question", task)
        raw_ans = f.get("answer")
        ans, atype = _s(f, "answer", task), "free_text"
    elif task == "finna":
        text = _s(f, "text", task)
        q = f"请为以下金融新闻写一句话摘要。\n新闻：{text}"
        raw_ans = f.get("summary")
        ans, atype = _s(f, "summary", task), "free_text"
    elif task == "finre":
        head, tail, text = _s(f, "head_entity", task), _s(f, "tail_entity", task), _s(f, "text", task)
        q = f"请判断以下句子中“{head}”与“{tail}”之间的金融关系，只输出关系名称（无明确关系时输出 unknown）。\n句子：{text}"
        raw_ans = f.get("relation")
        ans, atype = _s(f, "relation", task), "label"
    elif task == "finnsp":
        title, text, entity = _s(f, "title", task, required=False), _s(f, "text", task), _s(f, "entity", task)
        neg = _s(f, "negative", task)
        raw_ans = {"negative": f.get("negative"), "key_entity": f.get("key_entity")}
        if neg not in ("0", "1"):
            raise Skip(f"unparseable finnsp negative flag {neg!r} (expected 0/1)")
        key = _s(f, "key_entity", task, required=False)
        if neg == "1" and not key:
            raise Skip("finnsp row is negative but key_entity is empty")
        q = ("请判断以下金融新闻对其中提到的实体是否为负面信息。若是，请列出负面信息的主体（多个用英文分号;分隔）；否则回答“无”。\n"
             f"实体：{entity}\n" + (f"标题：{title}\n" if title else "") + f"正文：{text}")
        ans, atype = (key if neg == "1" else "无"), "free_text"
    elif task == "finnl":
        text = _s(f, "text", task)
        raw_ans = f.get("label")
        q = f"请对以下金融新闻进行分类，可以有多个类别，类别之间用空格分隔。\n新闻：{text}"
        ans, atype = " ".join(_s(f, "label", task).split()), "label"
    else:  # finese
        text, etype = _s(f, "text", task), _s(f, "event_type", task)
        q = f"请找出以下新闻中“{etype}”事件的主体。\n新闻：{text}"
        raw_ans = f.get("subject")
        ans, atype = _s(f, "subject", task), "free_text"
    return dict(question=q, choices=None, answer=ans, answer_raw=raw_str(raw_ans), answer_type=atype,
                consumed=consumed, meta={"task": task}, math_reasoning=False)


# =========================================================================== multiple-choice exams
def _gold(row: dict, *keys: str) -> tuple[str, Any]:
    key, gold = _first_present(row, *keys)
    if key is None:
        raise Skip(f"no gold answer ({'/'.join(keys)} missing or empty: unlabelled row)")
    if isinstance(gold, str) and gold.strip().lower() in ("nan", "none", "null"):
        raise Skip(f"no gold answer ({key} is {gold.strip()!r} in the source)")
    return key, gold


def _mcq(row: dict, qkeys: tuple[str, ...], akeys: tuple[str, ...], prefix: str = "") -> dict:
    q = get_text(row, *qkeys, what="question")
    choices = choices_from_columns(row)
    akey, gold = _gold(row, *akeys)
    if choices:
        answer, atype = choice_answer(gold, choices)
    else:
        tf = parse_tf(gold) if isinstance(gold, str) else None
        if tf is None:
            raise Skip(f"no options and answer {raw_str(gold)[:40]!r} is not 是/否")
        answer, atype = tf_str(tf), "true_false"
    consumed = [k for k in qkeys if k in row] + [akey] + list(choices or {})
    return dict(question=(prefix + q).strip(), choices=choices, answer=answer, answer_raw=raw_str(gold), answer_type=atype, consumed=consumed)


def _instruction_mcq(row: dict) -> dict:
    """``instruction``/``input``/``output`` with the options written into the instruction."""
    instr = get_text(row, "instruction", "prompt", what="question (instruction)")
    inp = get_text(row, "input", required=False)
    question = instr.strip() + ("\n" + inp.strip() if inp else "")
    akey, gold = _gold(row, "output", "answer", "gold_answer")
    choices = parse_option_lines(question)
    if choices:
        answer, atype = choice_answer(gold, choices)
    else:
        s = html.unescape(gold).strip() if isinstance(gold, str) else gold
        tf = parse_tf(s) if isinstance(s, str) else None
        num = to_decimal_str(s) if not isinstance(s, str) or len(s) < 40 else None
        if tf is not None:
            answer, atype = tf_str(tf), "true_false"
        elif num is not None:
            answer, atype = num, "numeric"
        elif isinstance(s, str) and final_number(s) is not None:
            answer, atype = final_number(s), "numeric"
        else:
            try:
                answer, atype = choice_answer(gold, None)
            except Skip:
                answer, atype = (s if isinstance(s, str) else raw_str(s)), "free_text"
    return dict(question=question, choices=None, answer=answer, answer_raw=raw_str(gold), answer_type=atype,
                consumed=["instruction", "prompt", "input", akey], meta={"options": choices} if choices else {})


def financeiq_matches(row: Any) -> bool:
    return isinstance(row, dict) and ((("Question" in row or "question" in row) and "A" in row) or "instruction" in row)


def financeiq_convert(row: Any, ctx: RowCtx) -> dict:
    row = _dict(row)
    if "instruction" in row and "A" not in row:
        return _instruction_mcq(row)
    out = _mcq(row, ("Question", "question"), ("Answer", "answer"))
    out["subject"] = str(row.get("subject") or "")
    return out


def fineval_matches(row: Any) -> bool:
    return isinstance(row, dict) and "question" in row and "A" in row


def fineval_convert(row: Any, ctx: RowCtx) -> dict:
    row = _dict(row)
    out = _mcq(row, ("question",), ("answer",))
    out["subject"] = str(row.get("subject") or "")
    return out


ANT_TF_INSTRUCTIONS = {
    "信息安全合规": "请判断下列描述是否符合金融与信息合规性。如果合规请回答是，否则回答否。",
    "金融合规性": "请判断下列描述是否符合金融合规性要求。如果合规请回答是，否则回答否。",
    "金融事实性": "请判断下列描述是否符合金融事实。如果符合请回答是，否则回答否。",
    "金融问题识别": "请判断下列问题是否属于金融领域的问题。如果是请回答是，否则回答否。",
}
ANT_MODULES = {"金融知识": KNOWLEDGE, "金融逻辑": REASONING, "金融认知": NON_REASONING, "内容生成": NON_REASONING, "安全合规": NON_REASONING}


def ant_finance_matches(row: Any) -> bool:
    return isinstance(row, dict) and "question" in row and "answer" in row and "instruction" not in row


def ant_finance_convert(row: Any, ctx: RowCtx) -> dict:
    row = _dict(row)
    subtask = str(row.get("subtask") or "")
    context = get_text(row, "context", required=False)
    prefix = f"{context.strip()}\n\n" if context else ""
    if choices_from_columns(row) is None:
        instr = ANT_TF_INSTRUCTIONS.get(subtask, f"请判断下列问题或描述（{subtask or '判断题'}），回答“是”或“否”。")
        out = _mcq(row, ("question",), ("answer",), prefix=f"{prefix}{instr}\n问题: ")
    else:
        out = _mcq(row, ("question",), ("answer",), prefix=prefix)
    out["consumed"] = out["consumed"] + (["context"] if context else [])
    out["module"] = ANT_MODULES.get(str(row.get("category") or ""), NON_REASONING)
    out["subject"] = subtask
    return out


def instruction_matches(row: Any) -> bool:
    return isinstance(row, dict) and ("instruction" in row or "prompt" in row) and ("output" in row or "answer" in row)


def ant_finance_finr1eval_convert(row: Any, ctx: RowCtx) -> dict:
    return _instruction_mcq(_dict(row))


def fincorpus_convert(row: Any, ctx: RowCtx) -> dict:
    return _instruction_mcq(_dict(row))


def _criteria(row: dict) -> list[tuple[str, str]]:
    out = []
    for k in sorted((k for k in row if re.fullmatch(r"criterium\d+", k)), key=lambda k: int(k[9:])):
        v = row[k]
        if is_missing(v):
            continue
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                try:
                    v = ast.literal_eval(v)
                except (ValueError, SyntaxError):
                    pass
        if isinstance(v, dict):
            out.append((str(v.get("content", "")).strip(), str(v.get("score", "")).strip()))
        elif isinstance(v, str):
            out.append((v.strip(), ""))
        else:
            raise Skip(f"wrong type: {k} is {type(v).__name__}, expected an object or text")
    return out


CFB_SENTIMENT = {"中性", "积极", "消极"}


def cfbenchmark_matches(row: Any) -> bool:
    return isinstance(row, dict) and ("question" in row or ("instruction" in row and "response" in row))


def cfbenchmark_convert(row: Any, ctx: RowCtx) -> dict:
    row = _dict(row)
    subset = str(row.get("_subset") or "")
    module = REASONING if "金融计算" in subset else KNOWLEDGE if "金融知识" in subset else NON_REASONING
    if "question" not in row and "response" in row:  # Basic: instruction/input/response
        instr = get_text(row, "instruction", what="instruction")
        inp = get_text(row, "input", required=False)
        akey, gold = _gold(row, "response")
        if not isinstance(gold, str):
            raise Skip(f"wrong type: response is {type(gold).__name__}, expected text")
        ans = gold.strip()
        atype = "label" if ans in CFB_SENTIMENT else "free_text"
        return dict(question=instr.strip() + ("\n" + inp.strip() if inp else ""), choices=None, answer=ans, answer_raw=gold,
                    answer_type=atype, module=module, consumed=["instruction", "input", "response"], subject=subset)
    crit = _criteria(row)
    if crit and "answer" not in row:  # subjective: grading rubric as the reference answer
        q = get_text(row, "question", what="question")
        ref = "\n".join(f"{i}. {c}" + (f"（{s}分）" if s else "") for i, (c, s) in enumerate(crit, 1))
        return dict(question=q.strip(), choices=None, answer=ref, answer_raw=ref, answer_type="free_text", module=module,
                    consumed=["question"], meta={"grading": "rubric"}, subject=subset)
    if choices_from_columns(row):
        out = _mcq(row, ("question",), ("answer",))
    else:  # extraction / compliance: text answer
        q = get_text(row, "question", what="question")
        akey, gold = _gold(row, "answer")
        if not isinstance(gold, str):
            raise Skip(f"wrong type: answer is {type(gold).__name__}, expected text")
        tf = parse_tf(gold)
        out = dict(question=q.strip(), choices=None, answer=tf_str(tf) if tf is not None else gold.strip(), answer_raw=gold,
                   answer_type="true_false" if tf is not None else "free_text", consumed=["question", "answer"])
    out["module"] = module
    out["subject"] = subset
    return out


# =========================================================================== FinPEE
def finpee_matches(row: Any) -> bool:
    return isinstance(row, dict) and "question" in row and "answer" in row


def finpee_convert(row: Any, ctx: RowCtx) -> dict:
    row = _dict(row)
    q = get_text(row, "question", what="question")
    key, gold = _gold(row, "answer")
    if not isinstance(gold, str):
        num = to_decimal_str(gold)
        if num is None:
            raise Skip(f"wrong type: answer is {type(gold).__name__}, expected text")
        return dict(question=q.strip(), choices=None, answer=num, answer_raw=raw_str(gold), answer_type="numeric", consumed=["question", "answer"])
    num = to_decimal_str(gold)
    return dict(question=q.strip(), choices=None, answer=num if num is not None else gold.strip(), answer_raw=gold,
                answer_type="numeric" if num is not None else "free_text", consumed=["question", "answer"])


# =========================================================================== instruction sources
def quant_matches(row: Any) -> bool:
    return isinstance(row, dict) and any(k in row for k in ("instruction", "question", "prompt")) and any(k in row for k in ("output", "answer", "response"))


def quant_convert(row: Any, ctx: RowCtx) -> dict:
    row = _dict(row)
    q = get_text(row, "instruction", "question", "prompt", what="question (instruction)")
    ctx_text = get_text(row, "input", "context", required=False)
    question = (f"{ctx_text.strip()}\n\n" if ctx_text and "instruction" not in row else "") + q.strip() + (
        f"\n\n{ctx_text.strip()}" if ctx_text and "instruction" in row else "")
    key, gold = _gold(row, "output", "answer", "response")
    if not isinstance(gold, str):
        raise Skip(f"wrong type: {key} is {type(gold).__name__}, expected code text")
    return dict(question=question, choices=None, answer=gold.strip("\n"), answer_raw=gold, answer_type="code",
                consumed=["instruction", "question", "prompt", "input", "context", key], math_reasoning=False)


def _messages(row: dict) -> tuple[str, str, dict]:
    msgs = row.get("messages") if "messages" in row else row.get("conversations")
    if not isinstance(msgs, list) or not msgs:
        raise Skip("no question (messages missing or empty)")
    norm = []
    for m in msgs:
        if not isinstance(m, dict):
            raise Skip(f"wrong type: message is {type(m).__name__}, expected an object")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        role = {"human": "user", "gpt": "assistant"}.get(role, role)
        if not isinstance(content, str):
            raise Skip(f"wrong type: message content is {type(content).__name__}, expected text")
        norm.append((role, content))
    system = [c for r, c in norm if r == "system"]
    turns = [(r, c) for r, c in norm if r != "system"]
    if not turns or turns[-1][0] != "assistant":
        raise Skip("no gold answer (the conversation does not end with an assistant turn)")
    if len(turns) < 2 or turns[-2][0] != "user":
        raise Skip("no question (no user turn before the last assistant turn)")
    hist = "".join(f"{'User' if r == 'user' else 'Assistant'}: {c.strip()}\n\n" for r, c in turns[:-2])
    return hist + turns[-2][1].strip(), turns[-1][1], ({"system": system[0]} if system else {})


def finance_instruct_matches(row: Any) -> bool:
    return isinstance(row, dict) and (("user" in row and "assistant" in row) or "messages" in row or "conversations" in row
                                      or ("instruction" in row and "output" in row))


def finance_instruct_convert(row: Any, ctx: RowCtx) -> dict:
    """``system``/``user``/``assistant`` (the hub layout), ``instruction``/``input``/``output`` or
    ``messages``. The system text is kept in ``meta`` only (the pipeline uses no system prompt)."""
    row = _dict(row)
    meta: dict = {}
    if "messages" in row or "conversations" in row:
        question, gold, meta = _messages(row)
        consumed = ["messages", "conversations"]
    elif "user" in row:
        question = get_text(row, "user", what="question (user)").strip()
        _, gold = _gold(row, "assistant")
        consumed = ["user", "assistant"]
    else:
        instr = get_text(row, "instruction", what="question (instruction)")
        inp = get_text(row, "input", required=False)
        question = instr.strip() + ("\n\n" + inp.strip() if inp else "")
        _, gold = _gold(row, "output")
        consumed = ["instruction", "input", "output"]
    if not isinstance(gold, str):
        num = to_decimal_str(gold)
        if num is None:
            raise Skip(f"wrong type: answer is {type(gold).__name__}, expected text")
        return dict(question=question, choices=None, answer=num, answer_raw=raw_str(gold), answer_type="numeric", consumed=consumed, meta=meta)
    g = gold.strip()
    num = to_decimal_str(g) if len(g) < 40 else None
    if num is not None:
        atype, ans = "numeric", num
    elif g.startswith("```"):
        atype, ans = "code", g
    else:
        atype, ans = "free_text", g
    return dict(question=question, choices=None, answer=ans, answer_raw=gold, answer_type=atype, consumed=consumed, meta=meta)
