"""Release publishing: an empty split still loads with datasets.load_dataset(<release dir>), and a
release or a refresh becomes visible all at once (a kill mid-write leaves the previous one)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from finr1_core import publish
from finr1_core.release import ReleaseError, refresh_latest, release_dataset, resolve_latest

REPO = Path(__file__).resolve().parent.parent


def _row(i: int, route: str, src: str = "finqa") -> dict:
    return {"key": f"k{i}", "record_id": f"r{i}", "repo_name": src, "question": f"q{i}?", "language": "en",
            "text": f"<think>\nstep {i}\n</think>\n\n\\boxed{{{i}}}", "verdict": "correct" if route == "sft" else "incorrect",
            "reasoning_judge": 1 if route == "sft" else None, "route": route,
            "route_reason": "answer_correct_rule+reasoning_1" if route == "sft" else "answer_incorrect_rule",
            "completion_tokens": 10 + i, "teacher_model": "teacher-x"}


def _header(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def test_empty_sft_split_loads_with_load_dataset(tmp_path):
    """The embedded demo: nothing passes both judges, so sft is empty."""
    from datasets import load_dataset

    out = tmp_path / "release"
    info = release_dataset([_row(i, "rl") for i in range(3)], str(out))
    assert info["counts"] == {"sft": 0, "rl": 3}
    ds = load_dataset(str(out))
    assert list(ds) == ["rl"] and sorted(ds["rl"]["key"]) == ["k0", "k1", "k2"]
    head = _header((out / "README.md").read_text())
    feats = {f["name"] for f in head["dataset_info"]["features"]}
    assert {"conversation", "route", "reasoning_judge", "lineage"} <= feats and len(feats) == 23
    assert {s["name"]: s["num_examples"] for s in head["dataset_info"]["splits"]} == {"rl": 3}
    assert "`sft` have no rows in this release" in (out / "README.md").read_text()
    import pyarrow.parquet as pq
    assert pq.read_table(out / "data" / "sft-00000-of-00001.parquet").num_rows == 0  # the file is still there, typed
    assert pq.read_schema(out / "data" / "sft-00000-of-00001.parquet").names == pq.read_schema(out / "data" / "rl-00000-of-00001.parquet").names


def test_both_splits_load_and_card_lists_both(tmp_path):
    from datasets import load_dataset

    out = tmp_path / "release"
    release_dataset([_row(0, "sft"), _row(1, "rl"), _row(2, "sft")], str(out))
    ds = load_dataset(str(out))
    assert {k: ds[k].num_rows for k in ds} == {"sft": 2, "rl": 1}
    head = _header((out / "README.md").read_text())
    assert [d["split"] for d in head["configs"][0]["data_files"]] == ["sft", "rl"]
    assert ds["sft"].features["conversation"].feature["role"].dtype == "string"


def test_publish_tree_replaces_whole_tree(tmp_path):
    out = str(tmp_path / "t")
    publish.publish_tree({"a.txt": b"1", "d/b.txt": b"2"}, out)
    publish.publish_tree({"c.txt": b"3"}, out)
    assert publish.read_tree(out) == {"c.txt": b"3"} and publish.committed(out)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


_WRITER = """
import sys
from finr1_core import publish
from finr1_core.release import refresh_latest
mode, target = sys.argv[1], sys.argv[2]
if mode == "tree":
    publish.publish_tree({f"part-{i:04d}.bin": bytes([i % 251]) * 200_000 for i in range(600)}, target)
else:
    refresh_latest(target, sys.argv[3])
"""


def _kill_when(proc: subprocess.Popen, cond, timeout: float = 60) -> None:
    t = time.monotonic()
    while not cond():
        assert proc.poll() is None, "writer finished before it could be killed"
        assert time.monotonic() - t < timeout
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _writer(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WRITER, *args], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_publish_tree_killed_mid_write_keeps_old_tree(tmp_path):
    out = tmp_path / "t"
    publish.publish_tree({"README.md": b"old", "data.bin": b"x"}, str(out))
    p = _writer("tree", str(out))
    _kill_when(p, lambda: any(d.name.startswith(".t.tmp-") and len(os.listdir(d)) > 5 for d in tmp_path.iterdir()))
    assert publish.read_tree(str(out)) == {"README.md": b"old", "data.bin": b"x"} and publish.committed(str(out))


def test_refresh_latest_killed_mid_write_readers_see_previous(tmp_path):
    from datasets import load_dataset

    root = tmp_path / "runs"
    release_dataset([_row(0, "sft"), _row(1, "rl")], str(root / "runA" / "release"))
    first = refresh_latest(str(root), "runA")
    assert resolve_latest(str(root)) == first and first["run_id"] == "runA" and first["files"] >= 9
    # a big release for run B: the refresh takes long enough to be killed half way
    rel_b = root / "runB" / "release"
    release_dataset([_row(i, "rl") for i in range(5)], str(rel_b))
    (rel_b / "extra").mkdir()
    for i in range(600):
        (rel_b / "extra" / f"blob-{i:04d}.bin").write_bytes(os.urandom(100_000))
    versions = root / "_release" / "versions"
    p = _writer("refresh", str(root), "runB")
    _kill_when(p, lambda: any(v.name.endswith("-runB") and (v / "extra").exists() and len(os.listdir(v / "extra")) > 3
                              for v in versions.iterdir()))
    now = resolve_latest(str(root))
    assert now == first  # the pointer never moved
    ds = load_dataset(now["uri"])  # and what it points at is the complete previous release
    assert {k: ds[k].num_rows for k in ds} == {"sft": 1, "rl": 1}
    partial = [v for v in versions.iterdir() if v.name.endswith("-runB")]
    assert len(partial) == 1 and len(os.listdir(partial[0] / "extra")) < 600
    # a refresh that completes moves the pointer; old versions are pruned down to `keep`
    second = refresh_latest(str(root), "runB", keep=2)
    assert resolve_latest(str(root)) == second and second["run_id"] == "runB"
    assert len(os.listdir(Path(second["uri"]) / "extra")) == 600
    assert load_dataset(second["uri"])["rl"].num_rows == 5
    assert len(list(versions.iterdir())) == 2 and not Path(first["uri"]).exists()  # the oldest pruned


def test_refresh_without_complete_release_is_one_line(tmp_path):
    with pytest.raises(ReleaseError, match=r"^run nope has no complete release at .*nope/release$"):
        refresh_latest(str(tmp_path), "nope")
    assert resolve_latest(str(tmp_path)) is None


def test_refresh_latest_on_s3(moto_s3):
    import s3fs

    opts = {"key": moto_s3["key"], "secret": moto_s3["secret"], "endpoint_url": moto_s3["endpoint_url"]}
    s3fs.S3FileSystem(**opts).mkdir("finr1-rel")
    root = "s3://finr1-rel/runs"
    release_dataset([_row(0, "sft"), _row(1, "rl")], f"{root}/run1/release", storage_options=opts)
    assert publish.committed(f"{root}/run1/release", opts)
    ptr = refresh_latest(root, "run1", storage_options=opts)
    assert resolve_latest(root, opts) == ptr and ptr["uri"].startswith(f"{root}/_release/versions/") and ptr["uri"].endswith("-run1")
    files = publish.read_tree(ptr["uri"], opts)
    assert "README.md" in files and "data/sft-00000-of-00001.parquet" in files
    assert json.loads(publish.read_tree(f"{root}/_release", opts)["latest.json"])["run_id"] == "run1"
