"""Config validation: a bad key or value fails before any work, in one line naming the key."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finr1_core.config import REPO_ROOT, ConfigError, load_config


def _write(tmp_path, mutate) -> Path:
    cfg = yaml.safe_load((REPO_ROOT / "configs" / "embedded.yaml").read_text())
    mutate(cfg)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return p


def test_shipped_configs_validate():
    emb = load_config(REPO_ROOT / "configs" / "embedded.yaml")
    assert emb.teacher.temperature == 0.6 and emb.prompts.think_prefix == "<think>\n"
    assert emb.teacher.model.endswith("SmolLM2-135M-Instruct-bf16")
    prod = load_config(REPO_ROOT / "configs" / "production.yaml")
    assert prod.teacher.model == "deepseek-ai/DeepSeek-R1" and prod.teacher.mode == "chat-prefill"
    assert prod.judge.model == "Qwen/Qwen2.5-72B-Instruct"
    assert prod.train.base_model == "Qwen/Qwen2.5-7B-Instruct"
    assert prod.train.sft.accelerate_config.endswith("infra/accelerate/zero3-single-node.yaml")
    assert prod.train.sft.recipe.endswith("configs/recipes/qwen2.5-7b-instruct/sft.yaml")
    assert prod.storage_root.startswith("s3://")


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["teacher"].__setitem__("temperature", 7), "config error: teacher.temperature: Input should be less than or equal to 2 (got 7)"),
        (lambda c: c["teacher"].__setitem__("temprature", 0.6), "config error: teacher.temprature: unknown key"),
        (lambda c: c["distill"].__setitem__("shard_size", "big"), "config error: distill.shard_size: Input should be a valid integer"),
        (lambda c: c.pop("teacher"), "config error: teacher: Field required"),
        (lambda c: c["teacher"].__setitem__("mode", "stream"), "config error: teacher.mode: Input should be 'completions', 'chat-prefill' or 'chat'"),
    ],
)
def test_bad_key_or_value_is_one_line(tmp_path, mutate, expected):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, mutate))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(expected), msg


def test_cli_rejects_bad_config_before_any_work(tmp_path):
    p = _write(tmp_path, lambda c: c["eval"].__setitem__("max_rows", 0))
    storage = tmp_path / "runs"
    r = subprocess.run([str(Path(sys.executable).with_name("finr1")), "run", "--config", str(p), "--storage", str(storage)],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert r.returncode == 2
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "eval.max_rows" in lines[0] and "greater than or equal to 1" in lines[0]
    assert not storage.exists()  # nothing was started or written


def test_secrets_come_from_env_and_never_reach_the_config(monkeypatch):
    from finr1_core.llm import endpoints_from_role as endpoints_for

    monkeypatch.setenv("FINR1_TEACHER_API_KEY", "sk-very-secret")
    prod = load_config(REPO_ROOT / "configs" / "production.yaml")
    eps = endpoints_for(prod.teacher, None)
    assert eps[0].api_key == "sk-very-secret"
    assert "sk-very-secret" not in repr(eps[0])
    assert "sk-very-secret" not in str(prod.public_dict())
