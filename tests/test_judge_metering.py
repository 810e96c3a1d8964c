"""Judge metering and the one way to build a client: tokens per score shard, rpm/tpm reaching the
judge client, keys only through the environment. Against the real scripted judge server."""
from __future__ import annotations

import json
import pickle
import time

from finr1_core.config import FilterConfig, LLMRole
from finr1_core.judge import AnswerJudge, JudgeUsage, judge_many, sum_judge_usage
from finr1_core.llm import ClientSpec
from finr1_core.route import score_shard_rows
from tests.judge_server import JudgeServer
from tests.test_route_release import RECORDS, TRACES, scripted_judge


def judge_role(srv: JudgeServer, **kw) -> LLMRole:
    return LLMRole(model="judge", mode="chat", endpoints=[{"name": "judge", "base_url": srv.base_url, "api_key_env": "FINR1_TEST_JUDGE_KEY"}],
                   max_retries=0, backoff_base_s=0.01, price_per_m_input=2.0, price_per_m_output=8.0, **kw)


def test_score_shard_rows_meters_every_judge_request(monkeypatch):
    monkeypatch.setenv("FINR1_TEST_JUDGE_KEY", "sk-judge-never-written-42")
    with JudgeServer(scripted_judge) as srv:
        role = judge_role(srv)
        rows, extra = score_shard_rows(TRACES, RECORDS, ClientSpec.from_role(role).build(), FilterConfig(judge_retries=1), judge_role=role)
        answered = [r for r in srv.requests if r["status"] == 200]
        replies = [scripted_judge(r["prompt"], 0) for r in answered]
    assert len(rows) == len(TRACES) and answered
    # the server bills len(prompt) prompt tokens and len(reply) completion tokens
    assert extra["judge_requests"] == len(answered)
    assert extra["judge_prompt_tokens"] == sum(len(r["prompt"]) for r in answered)
    assert extra["judge_completion_tokens"] == sum(len(x) for x in replies)
    assert extra["judge_cost_usd"] == extra["judge_prompt_tokens"] / 1e6 * 2.0 + extra["judge_completion_tokens"] / 1e6 * 8.0
    by = extra["judge_by_template"]
    assert set(by) == {"answer_judge_v1", "reasoning_judge_v1"}
    assert sum(v["requests"] for v in by.values()) == len(answered)
    # the key went to the judge, and is in no figure
    assert all(r["authorization"] == "Bearer sk-judge-never-written-42" for r in answered)
    assert "sk-judge" not in json.dumps(extra) + json.dumps(rows, default=str)
    totals = sum_judge_usage([extra, extra])
    assert totals["judge_prompt_tokens"] == 2 * extra["judge_prompt_tokens"] and totals["judge_requests"] == 2 * len(answered)


def test_failed_judge_requests_are_counted_apart():
    with JudgeServer(lambda p, i: (500, "boom") if i % 2 == 0 else r"\boxed{1}") as srv:
        usage = JudgeUsage()
        items = [dict(question=f"q{k}", gold="1", candidate="1") for k in range(4)]
        res = judge_many(AnswerJudge(ClientSpec.from_role(judge_role(srv)).build(), retries=1, usage=usage), items, concurrency=1)
        statuses = [r["status"] for r in srv.requests]
    assert [r.score for r in res] == [1, 1, 1, 1]
    assert usage.requests == statuses.count(200) == 4 and usage.failed_requests == statuses.count(500) == 4


def test_judge_rpm_from_the_role_reaches_the_client():
    # 60 requests per minute: a burst of 10, then one per second
    with JudgeServer(lambda p, i: r"\boxed{1}") as srv:
        client = ClientSpec.from_role(judge_role(srv, rpm=60, max_concurrency=16)).build()
        items = [dict(question=f"q{k}", gold="1", candidate="1") for k in range(12)]
        t = time.monotonic()
        res = judge_many(AnswerJudge(client, retries=0), items, concurrency=16)
        dt = time.monotonic() - t
        sent = len(srv.requests)
    assert all(r.score == 1 for r in res)
    assert 1.8 <= dt < 8, dt
    assert sent == 12


def test_client_spec_is_serialisable_without_keys_and_splits_limits(monkeypatch):
    monkeypatch.setenv("FINR1_TEST_JUDGE_KEY", "sk-judge-never-written-42")
    role = LLMRole(model="m", mode="chat", max_concurrency=9, rpm=120, tpm=9000,
                   endpoints=[{"name": "a", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "FINR1_TEST_JUDGE_KEY"},
                              {"name": "local"}])
    spec = ClientSpec.from_role(role, "http://127.0.0.1:8/v1")
    assert [e.base_url for e in spec.endpoints] == ["http://127.0.0.1:9/v1", "http://127.0.0.1:8/v1"]
    w = spec.for_workers(2)
    assert (w.max_concurrency, w.rpm, w.tpm, w.capacity()) == (5, 60.0, 4500.0, 10)
    assert pickle.loads(pickle.dumps(w)) == w and ClientSpec.from_dict(json.loads(json.dumps(w.to_dict()))) == w
    assert "sk-judge" not in repr(w) + json.dumps(w.to_dict()) and b"sk-judge" not in pickle.dumps(w)
    client = w.build()
    assert client.endpoints[0].api_key == "sk-judge-never-written-42" and client.endpoints[1].api_key == "EMPTY"
    assert "sk-judge" not in repr(client)
    try:
        ClientSpec.from_role(LLMRole(model="m"))  # the managed endpoint with no server URL
    except ValueError as e:
        assert "endpoints.local.base_url" in str(e)
    else:
        raise AssertionError("no error for an endpoint without base_url")
