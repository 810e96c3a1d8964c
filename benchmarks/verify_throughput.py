"""Verifier throughput: finr1's rule verifier vs Math-Verify alone, same rows, same run, one core.

    python benchmarks/verify_throughput.py [--rows 100000] [--mv-rows 3000] [--cpu 0]

Rows are a realistic mix of distilled traces (think block of 0.5-4k characters, then the answer):
option letters single/multi, true/false, sentiment labels, numbers (percent vs ratio, separators,
units, currency), and some free text; about 70 % right answers. Math-Verify (``parse`` both sides
+ ``verify``, gold wrapped in ``$…$`` since it parses no bare ``B``) is run on the first ``--mv-rows`` rows of the same list (it is ~100x slower; running
it on all 100k would take many minutes), and rows/s are compared. Not a test; prints a table.
"""
from __future__ import annotations

import argparse
import os
import random
import time

FILL_ZH = "首先分析题目条件，然后逐项计算相关财务指标。根据公式可得结果，再核对单位与口径。"
FILL_EN = "First, read the table. Then compute the change and divide by the base year value. Check the units. "


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    letters = "ABCD"
    for _ in range(n):
        u = rng.random()
        right = rng.random() < 0.7
        think = (FILL_ZH if rng.random() < 0.6 else FILL_EN) * rng.randint(12, 90)
        if u < 0.35:  # mcq single (FinanceIQ, FinEval, FinCorpus, Ant)
            g = rng.choice(letters)
            p = g if right else rng.choice([c for c in letters if c != g])
            ans = rng.choice([f"答案是 \\boxed{{{p}}}", f"\\boxed{{{p}. 选项内容}}", f"故选 **{p}**", f"\\boxed{{\\text{{{p}}}}}"])
            rows.append({"gold": g, "type": "mcq_single", "pred": ans})
        elif u < 0.45:  # mcq multi (FinCorpus)
            g = "".join(sorted(rng.sample("ABCDE", rng.randint(2, 3))))
            p = g if right else "".join(sorted(rng.sample("ABCDE", 2)))
            ans = rng.choice([f"\\boxed{{{'、'.join(p)}}}", f"\\boxed{{{', '.join(p)}}}", f"答案是 {'; '.join(p)}"])
            rows.append({"gold": g, "type": "mcq_multi", "pred": ans})
        elif u < 0.55:  # true/false (Ant, FinCorpus, FinQA yes/no)
            g = rng.choice(["true", "false"])
            val = (g == "true") == right
            ans = "\\boxed{" + rng.choice(["正确", "对", "是", "yes"] if val else ["错误", "错", "否", "no"]) + "}"
            rows.append({"gold": g, "type": "true_false", "pred": ans})
        elif u < 0.65:  # labels (TFNS, FinCUGE finfe)
            g = rng.choice(["Bearish", "Bullish", "Neutral", "消极", "中性", "积极"])
            p = g if right else rng.choice(["Bearish", "Bullish", "Neutral"])
            rows.append({"gold": g, "type": "label", "pred": f"The sentiment is \\boxed{{{p}}}."})
        elif u < 0.95:  # numbers (FinQA, ConvFinQA)
            v = rng.uniform(-5e6, 5e6) if rng.random() < 0.5 else rng.uniform(-1, 1)
            g = f"{v:.5f}"
            pv = v if right else v * rng.choice([1.3, 0.6, 2.0])
            if abs(v) < 1 and rng.random() < 0.6:
                ans = f"\\boxed{{{pv * 100:.2f}\\%}}"
            elif abs(pv) > 1000 and rng.random() < 0.5:
                ans = f"The answer is ${pv:,.2f}."
            elif abs(pv) > 1e4 and rng.random() < 0.5:
                ans = f"\\boxed{{{pv / 1e4:.4f}万}}"
            else:
                ans = f"\\boxed{{{pv:.4f}}}"
            rows.append({"gold": g, "type": "numeric", "pred": ans})
        else:  # free text (FinCUGE extraction, Finance-Instruct)
            g = rng.choice(["供给减少导致市场价格提升", "无参数", "某某股份有限公司"])
            p = g if right else "需求增加"
            rows.append({"gold": g, "type": "free_text", "pred": p})
        rows[-1]["pred"] = f"<think>\n{think}\n</think>\n\n{rows[-1]['pred']}"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--mv-rows", type=int, default=3000)
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: the first allowed one)")
    a = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    cpu = a.cpu if a.cpu is not None else cpus[0]
    os.sched_setaffinity(0, {cpu})

    from math_verify import parse
    from math_verify import verify as mv_verify

    from finr1_core.verify import verify

    rows = make_rows(a.rows)
    verify("1", "1")  # warm imports / regex caches
    t = time.perf_counter()
    verdicts = [verify(r["gold"], r["pred"]).verdict for r in rows]
    t_ours = time.perf_counter() - t
    dec = [r for r, v in zip(rows, verdicts) if v != "unknown"]
    t = time.perf_counter()
    for r in dec:
        verify(r["gold"], r["pred"])
    t_dec = time.perf_counter() - t
    t = time.perf_counter()
    for r in rows:
        verify(r["gold"], r["pred"], r["type"])
    t_typed = time.perf_counter() - t

    sub = rows[: a.mv_rows]
    t = time.perf_counter()
    mv = []
    for r in sub:
        try:
            mv.append(bool(mv_verify(parse(f"${r['gold']}$"), parse(r["pred"]))))  # gold in $..$: MV parses no bare "B"
        except Exception:
            mv.append(False)
    t_mv = time.perf_counter() - t
    t = time.perf_counter()
    for r in sub:
        verify(r["gold"], r["pred"])
    t_ours_sub = time.perf_counter() - t

    counts = {k: verdicts.count(k) for k in ("correct", "incorrect", "unknown")}
    ours_sub = verdicts[: a.mv_rows]
    agree = sum((v == "correct") == m for v, m in zip(ours_sub, mv)) / len(sub)
    by_type: dict[str, list[int]] = {}
    for r, v in zip(sub, ours_sub):
        s = by_type.setdefault(r["type"], [0, 0, 0])
        s[0] += 1
        s[1] += v == "correct"
    for r, m in zip(sub, mv):
        by_type[r["type"]][2] += m

    mv_rate = len(sub) / t_mv
    print(f"\nverify throughput on CPU {cpu} (one core), {a.rows:,} rows; verdicts: {counts}\n")
    print("| method | rows | seconds | rows/s | vs Math-Verify |")
    print("|---|---:|---:|---:|---:|")
    for name, n, sec in [
        ("finr1 verify (all rows, type inferred)", len(rows), t_ours),
        ("finr1 verify (all rows, answer_type given)", len(rows), t_typed),
        ("finr1 verify (rule-decidable rows only)", len(dec), t_dec),
        (f"finr1 verify (first {len(sub):,} rows)", len(sub), t_ours_sub),
        (f"Math-Verify parse+verify (first {len(sub):,} rows)", len(sub), t_mv),
    ]:
        rate = n / sec if sec else float("inf")
        print(f"| {name} | {n:,} | {sec:.2f} | {rate:,.0f} | {rate / mv_rate:.1f}x |")
    print(f"\nTarget >= 20,000 rows/s on rule-decidable rows: {'MET' if len(dec) / t_dec >= 20000 else 'NOT MET'} "
          f"({len(dec) / t_dec:,.0f} rows/s)")
    print(f"\ncorrect-rate by answer type on the first {len(sub):,} rows (finr1 / Math-Verify), agreement {agree:.1%}:")
    print("| type | rows | finr1 correct | Math-Verify correct |")
    print("|---|---:|---:|---:|")
    for k, (n, o, m) in sorted(by_type.items()):
        print(f"| {k} | {n} | {o / n:.1%} | {m / n:.1%} |")


if __name__ == "__main__":
    main()
