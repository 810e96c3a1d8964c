"""Dedup and decontamination of training rows, with a removal report (nothing is dropped silently).

Three steps, in this order (``dedup_and_decontaminate`` runs all three):

1. **Exact dedup** on the normalized text (NFKC, casefold, whitespace and punctuation removed).
2. **Near-duplicate removal** with MinHash-LSH (datasketch) over **character** n-grams
   (``FilterConfig.minhash_ngram``, default 5), so it works for Chinese, which has no spaces.
   A candidate pair from LSH is confirmed with the estimated Jaccard similarity
   (``>= FilterConfig.minhash_threshold``, default 0.85).
3. **Decontamination** against evaluation texts with character n-grams
   (``FilterConfig.decontam_ngram``, default 13): a training row sharing an n-gram with an eval
   text is removed. Boilerplate is not evidence of a leak: an n-gram that occurs in at least
   ``template_min_docs`` distinct training groups (a shared prompt template such as
   ``请一步步思考，回答以下问题…``) is ignored.

Rows are grouped by ``group_key`` (default ``record_id``): the ``n`` samples distilled from one
record share a question and are never duplicates *of each other*; a later record whose question
duplicates an earlier one loses all its rows. Each removal is a dict: ``key``, ``record_id``,
``repo_name``, ``step`` (``exact_dup``/``near_dup``/``decontam``), ``reason``, ``matched``.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from .config import FilterConfig

_DROP = re.compile(r"[\s\u3000\W_]+", re.UNICODE)


def normalize_for_dedup(text: str) -> str:
    t = unicodedata.normalize("NFKC", text or "").casefold()
    return _DROP.sub("", t)


def char_ngrams(text: str, n: int) -> set[str]:
    if len(text) <= n:
        return {text} if text else set()
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def default_text(row: dict) -> str:
    q = row.get("question")
    if q:
        return str(q)
    conv = row.get("conversation") or row.get("messages") or []
    return "\n".join(str(m.get("content", "")) for m in conv if m.get("role") == "user")


@dataclass
class DedupResult:
    kept: list[dict]
    removed: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.removed:
            out[r["step"]] = out.get(r["step"], 0) + 1
        return out


def _rid(row: dict, i: int, id_key: str) -> str:
    v = row.get(id_key)
    return str(v) if v not in (None, "") else f"row-{i}"


def _gid(row: dict, i: int, group_key: str | None, id_key: str) -> str:
    if group_key and row.get(group_key) not in (None, ""):
        return str(row[group_key])
    return _rid(row, i, id_key)


def _removal(row: dict, i: int, id_key: str, step: str, reason: str, matched: str | None) -> dict:
    return {"key": _rid(row, i, id_key), "record_id": row.get("record_id"), "repo_name": row.get("repo_name"),
            "step": step, "reason": reason, "matched": matched}


def _groups(rows: Sequence[dict], text_fn, group_key, id_key):
    """Ordered {group id: (first row index, normalized text)}; row indices per group."""
    first: dict[str, tuple[int, str]] = {}
    members: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        g = _gid(r, i, group_key, id_key)
        if g not in first:
            first[g] = (i, normalize_for_dedup(text_fn(r)))
        members.setdefault(g, []).append(i)
    return first, members


def exact_dedup(rows: Sequence[dict], *, text_fn: Callable[[dict], str] = default_text, group_key: str | None = "record_id",
                id_key: str = "key") -> DedupResult:
    first, members = _groups(rows, text_fn, group_key, id_key)
    seen: dict[str, str] = {}
    drop: dict[int, dict] = {}
    for g, (_i, norm) in first.items():
        h = hashlib.blake2b(norm.encode(), digest_size=16).hexdigest()
        if not norm:
            continue  # empty text: nothing to compare; kept
        if h in seen:
            for j in members[g]:
                drop[j] = _removal(rows[j], j, id_key, "exact_dup", f"same normalized text as group {seen[h]}", seen[h])
        else:
            seen[h] = g
    kept = [r for j, r in enumerate(rows) if j not in drop]
    return DedupResult(kept, [drop[j] for j in sorted(drop)])


def near_dedup(rows: Sequence[dict], *, threshold: float = 0.85, ngram: int = 5, num_perm: int = 128, seed: int = 1,
               text_fn: Callable[[dict], str] = default_text, group_key: str | None = "record_id",
               id_key: str = "key") -> DedupResult:
    from datasketch import MinHash, MinHashLSH

    first, members = _groups(rows, text_fn, group_key, id_key)
    gids = [g for g, (_, norm) in first.items() if norm]
    shingles = [[s.encode("utf-8") for s in char_ngrams(first[g][1], ngram)] for g in gids]
    hashes = MinHash.bulk(shingles, num_perm=num_perm, seed=seed) if gids else []
    # LSH only proposes candidates (it needs >= 2 bands, so very high thresholds are clamped);
    # every candidate is confirmed with the estimated Jaccard against the real threshold
    lsh = MinHashLSH(threshold=min(threshold, 0.9), num_perm=num_perm)
    by_gid = {}
    # Items with different gold answers are different items, however alike their text: the turns
    # of one ConvFinQA conversation repeat the whole filing and differ only in the last question.
    gold = {g: rows[first[g][0]].get("gold") for g in gids}
    drop: dict[int, dict] = {}
    for g, m in zip(gids, hashes):
        best, best_j = None, 0.0
        for cand in lsh.query(m):
            if gold[g] is not None and gold[cand] is not None and str(gold[g]) != str(gold[cand]):
                continue
            j = m.jaccard(by_gid[cand])
            if j >= threshold and j > best_j:
                best, best_j = cand, j
        if best is not None:
            for k in members[g]:
                drop[k] = _removal(rows[k], k, id_key, "near_dup",
                                   f"MinHash Jaccard {best_j:.2f} >= {threshold} on char {ngram}-grams with group {best}", best)
        else:
            lsh.insert(g, m)
            by_gid[g] = m
    kept = [r for j, r in enumerate(rows) if j not in drop]
    return DedupResult(kept, [drop[j] for j in sorted(drop)])


def decontaminate(rows: Sequence[dict], eval_texts: Mapping[str, str] | Iterable[str], *, ngram: int = 13,
                  template_min_docs: int = 3, text_fn: Callable[[dict], str] = default_text,
                  group_key: str | None = "record_id", id_key: str = "key") -> DedupResult:
    """Remove training rows that share a character ``ngram`` with any evaluation text.

    An n-gram found in ``template_min_docs`` or more documents, training and evaluation texts
    counted together, is a shared prompt template, not a leak: a leaked item shows up in one
    training and one evaluation document, a template in every document of its source.
    """
    if not isinstance(eval_texts, Mapping):
        eval_texts = {f"eval-{i}": t for i, t in enumerate(eval_texts)}
    index: dict[str, str] = {}
    eval_df: dict[str, int] = {}
    for eid, t in eval_texts.items():
        norm = normalize_for_dedup(t)
        if len(norm) < ngram:
            continue  # too short to be evidence
        for g in char_ngrams(norm, ngram):
            index.setdefault(g, eid)
            eval_df[g] = eval_df.get(g, 0) + 1
    first, members = _groups(rows, text_fn, group_key, id_key)
    hits: dict[str, set[str]] = {}
    df: dict[str, int] = {}
    for g, (_, norm) in first.items():
        if len(norm) < ngram:
            continue
        h = {x for x in char_ngrams(norm, ngram) if x in index}
        if h:
            hits[g] = h
            for x in h:
                df[x] = df.get(x, 0) + 1
    drop: dict[int, dict] = {}
    for g, h in hits.items():
        real = sorted(x for x in h if df[x] + eval_df[x] < template_min_docs)
        if not real:
            continue
        eid = index[real[0]]
        for k in members[g]:
            drop[k] = _removal(rows[k], k, id_key, "decontam",
                               f"shares {len(real)} char {ngram}-gram(s) with eval text {eid}, e.g. {real[0]!r}", eid)
    kept = [r for j, r in enumerate(rows) if j not in drop]
    return DedupResult(kept, [drop[j] for j in sorted(drop)])


def dedup_and_decontaminate(rows: Sequence[dict], eval_texts: Mapping[str, str] | Iterable[str] | None,
                            cfg: FilterConfig | None = None, *, text_fn: Callable[[dict], str] = default_text,
                            group_key: str | None = "record_id", id_key: str = "key",
                            template_min_docs: int = 3) -> DedupResult:
    """Exact dedup, then MinHash near-dup removal, then decontamination against ``eval_texts``."""
    cfg = cfg or FilterConfig()
    kw = dict(text_fn=text_fn, group_key=group_key, id_key=id_key)
    a = exact_dedup(rows, **kw)
    b = near_dedup(a.kept, threshold=cfg.minhash_threshold, ngram=cfg.minhash_ngram, **kw)
    removed = a.removed + b.removed
    kept = b.kept
    if eval_texts:
        c = decontaminate(kept, eval_texts, ngram=cfg.decontam_ngram, template_min_docs=template_min_docs, **kw)
        removed += c.removed
        kept = c.kept
    return DedupResult(kept, removed)
