"""Checkpoints of an s3:// training output: pushed with fsspec, pulled back for resume (moto's S3 server)."""
from __future__ import annotations

import json

import s3fs

from finr1_core.training import checkpoints, tracking


def _fake_checkpoint(d, step, complete=True):
    ck = d / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"w" * 100 + bytes([step]))
    (ck / "optimizer.pt").write_bytes(b"o" * 50)
    if complete:
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ck


def test_s3_checkpoints_roundtrip_and_skip_incomplete(moto_s3, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3["secret"])
    monkeypatch.setenv("FINR1_HOME", str(tmp_path / "home"))
    fs = s3fs.S3FileSystem(key=moto_s3["key"], secret=moto_s3["secret"], endpoint_url=moto_s3["endpoint_url"])
    fs.mkdir("ckpt-test")
    uri = "s3://ckpt-test/runs/r1/models/sft"

    first = tmp_path / "first"
    for step in (2, 4):
        checkpoints.push(_fake_checkpoint(first, step), uri, f"checkpoint-{step}")
    checkpoints.push(_fake_checkpoint(first, 6, complete=False), uri, "checkpoint-6")  # died mid-save
    assert fs.exists("ckpt-test/runs/r1/models/sft/checkpoint-6/model.safetensors")

    staging = checkpoints.local_dir(uri)
    assert str(staging).startswith(str(tmp_path / "home"))
    last = checkpoints.pull_checkpoints(uri, staging)
    assert last == staging / "checkpoint-4"
    assert (last / "model.safetensors").read_bytes() == b"w" * 100 + bytes([4])
    assert json.loads((last / "trainer_state.json").read_text()) == {"global_step": 4}
    assert [s for s, _ in checkpoints.complete_checkpoints(staging)] == [4]


def test_reward_stats_and_plot(tmp_path):
    hist = [{"step": 1, "loss": 0.1, "learning_rate": 1e-5, "reward": 0.0, "reward_std": 0.0},
            {"step": 2, "loss": 0.05, "learning_rate": 5e-6, "reward": 0.4, "reward_std": 0.25}]
    st = tracking.reward_stats(hist)
    assert st == {"reward_steps": 2, "zero_reward_std_steps": 1, "max_reward_std": 0.25, "mean_reward": 0.2}
    png = tracking.plot_curves(hist, tmp_path / "c.png")
    assert png and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert tracking.plot_curves([{"step": 1}], tmp_path / "none.png") is None
