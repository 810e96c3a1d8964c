"""LLM judges: the answer judge and the reasoning judge (Fin-R1's two filtering rounds).

- Prompts are versioned template files in ``finr1_core/templates/`` (``answer_judge_v1.txt``,
  ``reasoning_judge_v1.txt``). The version string (``answer_judge_v1``) goes on every scored row.
- The verdict is the **last** ``\\boxed{0}``/``\\boxed{1}`` of the judge's own output (after its
  ``</think>`` when it has a think block). Output with no boxed 0/1, or with both values, is a
  failure.
- The candidate's text is data. It is placed between ``<<<CANDIDATE_START>>>`` /
  ``<<<CANDIDATE_END>>>`` and neutralised first: every ``\\boxed``/``\\fbox`` becomes ``[boxed]``
  and delimiter look-alikes (``<<<``, ``>>>``) are broken up, so neither a ``\\boxed{1}`` nor a fake
  end-of-data marker in the candidate can be mistaken for a verdict or escape the data block.
  Only the judge's response is parsed, never the prompt.
- Failures (LLMError after the client's own retries, no verdict, both values) are retried
  ``retries`` times. After that the score is ``None`` (unknown), never 0.
- Metering: a :class:`JudgeUsage` given to a judge counts every answered judge request and its
  prompt/completion tokens (failed parses included: they are billed), for the run's cost table.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .extract import boxed_contents, split_think
from .llm import LLMClient, LLMError, Sampling

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
ANSWER_JUDGE_VERSION = "answer_judge_v1"
REASONING_JUDGE_VERSION = "reasoning_judge_v1"


@dataclass
class JudgeResult:
    score: int | None  # 1, 0, or None (unknown after retries)
    raw: str  # the judge's last output (or the last error text)
    attempts: int
    template_version: str
    error: str | None = None  # why the last attempt failed, when score is None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class JudgeUsage:
    """Judge requests and tokens, summed over every judge that was given this object."""

    requests: int = 0  # answered requests (a parse failure counts: the tokens were billed)
    failed_requests: int = 0  # requests that still failed after the client's retries
    prompt_tokens: int = 0
    completion_tokens: int = 0
    by_template: dict = field(default_factory=dict)  # template version -> {"requests", "prompt_tokens", "completion_tokens"}

    def add(self, template_version: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.requests += 1
        self.prompt_tokens += int(prompt_tokens or 0)
        self.completion_tokens += int(completion_tokens or 0)
        t = self.by_template.setdefault(template_version, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
        t["requests"] += 1
        t["prompt_tokens"] += int(prompt_tokens or 0)
        t["completion_tokens"] += int(completion_tokens or 0)

    def cost_usd(self, role_cfg: Any) -> float:
        """USD at the judge role's ``price_per_m_input`` / ``price_per_m_output``."""
        return (self.prompt_tokens / 1e6 * float(getattr(role_cfg, "price_per_m_input", 0.0))
                + self.completion_tokens / 1e6 * float(getattr(role_cfg, "price_per_m_output", 0.0)))

    def as_extra(self, role_cfg: Any | None = None) -> dict:
        """The figures for a shard manifest's ``extra`` (keys prefixed ``judge_``)."""
        out = {"judge_requests": self.requests, "judge_failed_requests": self.failed_requests,
               "judge_prompt_tokens": self.prompt_tokens, "judge_completion_tokens": self.completion_tokens,
               "judge_by_template": {k: dict(v) for k, v in self.by_template.items()}}
        if role_cfg is not None:
            out["judge_model"] = getattr(role_cfg, "model", None)
            out["judge_cost_usd"] = self.cost_usd(role_cfg)
        return out


def sum_judge_usage(extras: Sequence[dict]) -> dict:
    """Totals over shard manifest ``extra`` dicts written with :meth:`JudgeUsage.as_extra` (a row
    of the run's cost table): requests, failed requests, prompt/completion tokens, cost."""
    keys = ("judge_requests", "judge_failed_requests", "judge_prompt_tokens", "judge_completion_tokens", "judge_cost_usd")
    out: dict = {k: 0 for k in keys}
    for ex in extras:
        for k in keys:
            out[k] += (ex or {}).get(k) or 0
    return out


def load_template(version: str) -> str:
    path = TEMPLATE_DIR / f"{version}.txt"
    if not path.exists():
        raise FileNotFoundError(f"judge template not found: {path}")
    return path.read_text(encoding="utf-8")


_BOX_CMD = re.compile(r"\\+\s*(boxed|fbox)", re.I)
_DELIMS = re.compile(r"<{3,}|>{3,}")


def sanitize(text: str | None) -> str:
    """Make untrusted text inert inside a judge prompt (see the module docstring)."""
    if not text:
        return ""
    t = _BOX_CMD.sub(r"[\1]", str(text))
    t = _DELIMS.sub(lambda m: " ".join(m.group(0)), t)
    return t


def clip(text: str, max_chars: int) -> str:
    """Keep head and tail of very long texts (the end of a reasoning trace holds its conclusion)."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    head = max_chars // 3
    tail = max_chars - head
    return text[:head] + "\n…[truncated]…\n" + text[-tail:]


_SLOT = re.compile(r"\{\{(\w+)\}\}")


def render(template: str, **values: str) -> str:
    """One-pass substitution: text inserted for a slot is never scanned for further slots."""
    return _SLOT.sub(lambda m: values.get(m.group(1), m.group(0)), template)


_VERDICT = re.compile(r"^\s*(?:\\text\{\s*)?([01])(?:\s*\})?\s*$")


def parse_verdict(output: str) -> tuple[int | None, str | None]:
    """(score, error). The last ``\\boxed{0|1}`` of the judge's output; both values -> error."""
    if not output or not output.strip():
        return None, "empty judge output"
    _, after = split_think(output)
    region = after if after else output
    vals = []
    for b in boxed_contents(region):
        m = _VERDICT.match(b)
        if m:
            vals.append(int(m.group(1)))
    if not vals:
        return None, "no \\boxed{0|1} verdict in judge output"
    if len(set(vals)) > 1:
        return None, "both \\boxed{0} and \\boxed{1} in judge output"
    return vals[-1], None


class _Judge:
    default_version = ""

    def __init__(self, client: LLMClient, template_version: str | None = None, *, retries: int = 2,
                 sampling: Sampling | None = None, retry_temperature: float = 0.7, max_chars: int = 24000,
                 usage: JudgeUsage | None = None):
        self.client = client
        self.usage = usage
        self.template_version = template_version or self.default_version
        self.template = load_template(self.template_version)
        self.template_hash = hashlib.sha256(self.template.encode()).hexdigest()[:12]
        self.retries = retries
        self.sampling = sampling or Sampling(temperature=0.0, top_p=1.0, max_tokens=1024)
        self.retry_temperature = retry_temperature
        self.max_chars = max_chars

    def build_messages(self, **slots: str) -> list[dict]:
        return [{"role": "user", "content": render(self.template, **slots)}]

    async def _run(self, messages: list[dict]) -> JudgeResult:
        raw, err = "", None
        attempts = 0
        for attempt in range(1, self.retries + 2):
            attempts = attempt
            s = self.sampling
            if attempt > 1 and self.retry_temperature is not None:
                s = Sampling(temperature=max(s.temperature, self.retry_temperature), top_p=s.top_p,
                             max_tokens=s.max_tokens, seed=None if s.seed is None else s.seed + attempt)
            try:
                comp = await self.client.acomplete(messages, s)
            except (LLMError, Exception) as e:  # errors after the client's own retries count as failures
                raw, err = str(e), f"judge request failed: {type(e).__name__}: {str(e)[:200]}"
                if self.usage is not None:
                    self.usage.failed_requests += 1
                continue
            if self.usage is not None:
                self.usage.add(self.template_version, comp.prompt_tokens, comp.completion_tokens)
            raw = comp.text or ""
            score, err = parse_verdict(raw)
            if score is not None:
                return JudgeResult(score, raw, attempts, self.template_version, None)
        return JudgeResult(None, raw, attempts, self.template_version, err)


class AnswerJudge(_Judge):
    """Fin-R1 round 1: is the candidate's final answer equivalent to the gold answer?"""

    default_version = ANSWER_JUDGE_VERSION

    def messages(self, question: str, gold: str, candidate: str, reasoning: str | None = None) -> list[dict]:
        return self.build_messages(
            question=sanitize(clip(question or "", self.max_chars)),
            gold=sanitize(gold or ""),
            reasoning=sanitize(clip(reasoning or "（无）", self.max_chars)),
            candidate=sanitize(clip(candidate or "", self.max_chars // 4)),
        )

    async def judge(self, question: str, gold: str, candidate: str, reasoning: str | None = None, **_: Any) -> JudgeResult:
        return await self._run(self.messages(question, gold, candidate, reasoning))


class ReasoningJudge(_Judge):
    """Fin-R1 round 2: the 7 reasoning criteria, with the task domain and instruction filled in."""

    default_version = REASONING_JUDGE_VERSION

    def messages(self, question: str, gold: str, candidate: str, reasoning: str | None = None,
                 domain: str | None = None, instruction: str | None = None) -> list[dict]:
        return self.build_messages(
            domain=sanitize(domain or "金融"),
            instruction=sanitize(clip(instruction or question or "", self.max_chars)),
            gold=sanitize(gold or ""),
            reasoning=sanitize(clip(reasoning or "", self.max_chars)),
            candidate=sanitize(clip(candidate or "", self.max_chars // 4)),
        )

    async def judge(self, question: str, gold: str, candidate: str, reasoning: str | None = None,
                    domain: str | None = None, instruction: str | None = None, **_: Any) -> JudgeResult:
        return await self._run(self.messages(question, gold, candidate, reasoning, domain, instruction))


async def ajudge_many(judge: _Judge, items: Sequence[dict], concurrency: int = 16) -> list[JudgeResult]:
    """Judge many items concurrently (each item: keyword arguments of ``judge.judge``). Order kept."""
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(it: dict) -> JudgeResult:
        async with sem:
            try:
                return await judge.judge(**it)
            except Exception as e:  # a bug in one item never sinks the batch
                return JudgeResult(None, "", 0, judge.template_version, f"{type(e).__name__}: {e}")

    return list(await asyncio.gather(*(one(it) for it in items)))


def judge_many(judge: _Judge, items: Sequence[dict], concurrency: int = 16) -> list[JudgeResult]:
    """Synchronous wrapper around :func:`ajudge_many` (closes the client's connections at the end)."""
    return run_sync(with_close(judge.client, ajudge_many(judge, items, concurrency)))


async def with_close(client: LLMClient, coro):
    """Await ``coro``, then close ``client``'s connections (they belong to this event loop; the
    client can be used again from a later one)."""
    try:
        return await coro
    finally:
        await client.aclose()


def run_sync(coro):
    """asyncio.run, also from inside a running loop (then in a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()
