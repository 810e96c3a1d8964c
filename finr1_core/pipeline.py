"""The pipeline's stages as plain functions (no Prefect here).

Each stage reads its inputs from the shard store, writes its outputs as committed shards, and
returns a small JSON-able summary. A stage whose manifest is complete with the same config hash
is skipped, so a second run over the same storage does no work twice. The Prefect tasks in
``tasks/`` are thin wrappers over these functions, and the CLI can call them directly.

Stage outputs under ``<storage_root>/<run_id>/``::

    records/     normalized records, one shard per source        (ingest)
    quarantine/  rows that could not be normalized, with reason  (ingest)
    heldout/     records held out for evaluation                 (ingest)
    prompts/     prompts, one shard per distill shard            (prompts)
    distill/     teacher traces with lineage                     (distill, one task per shard)
    scored/      traces + rule verdicts + judge scores + route    (score, one task per shard)
    sft/ rl/     the routed, deduplicated, decontaminated splits (split)
    release/     Financial-R1-Distill-Data: parquet + README card + plots
    models/      sft/ and grpo/ checkpoints
    eval/        per-model evaluation rows
    report/      report.md
"""
from __future__ import annotations

import json
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

from finr1_core.config import PipelineConfig, finr1_home, load_config
from finr1_core.llm import Endpoint, LLMClient, Sampling, endpoints_from_role
from finr1_core.storage import Store, config_hash

def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def load(config_path: str | None = None, run_id: str | None = None, **overrides) -> PipelineConfig:
    cfg = load_config(config_path, overrides)
    if run_id:
        cfg.run_id = run_id
    return cfg


def save_run_config(cfg: PipelineConfig) -> None:
    """Keep the run's resolved config (never secrets: keys stay in the environment) with the run."""
    store = store_for(cfg)
    store.write_json(store.uri("config.json"), cfg.public_dict())


def load_run_config(storage_root: str, run_id: str) -> PipelineConfig:
    """The config a run was started with, so a retry redoes exactly the missing work."""
    store = Store(storage_root, run_id)
    uri = store.uri("config.json")
    if not store.exists(uri):
        raise ValueError(f"no run {run_id!r} under {storage_root} (missing {uri})")
    return PipelineConfig.model_validate(store.read_json(uri))


def pending_shards(cfg: PipelineConfig) -> dict[str, list[str]]:
    """Per sharded stage, the prompt shards not yet committed."""
    store = store_for(cfg)
    shards = [e["shard"] for e in store.shards("prompts")]
    return {st: [s for s in shards if not store.shard_committed(st, s)] for st in ("distill", "scored")}


def store_for(cfg: PipelineConfig) -> Store:
    if not cfg.run_id:
        raise ValueError("run_id is not set")
    return Store(cfg.storage_root, cfg.run_id)


def _h(*parts) -> str:
    return config_hash([p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts])


def endpoints_for(role, base_url: str | None) -> list[Endpoint]:
    """Endpoints of a role; an endpoint without ``base_url`` is the managed local server."""
    return endpoints_from_role(role, base_url)


def client_for(role, base_url: str | None, max_retries: int | None = None) -> LLMClient:
    return LLMClient(
        endpoints_for(role, base_url),
        role.model,
        mode=role.mode,
        tokenizer_path=role.tokenizer or role.model,
        max_concurrency=role.max_concurrency,
        timeout_s=role.timeout_s,
        max_retries=role.max_retries if max_retries is None else max_retries,
    )


# ----------------------------------------------------------------------------- ingest
def stage_ingest(cfg: PipelineConfig) -> dict:
    from finr1_core.ingest import ingest_sources
    from finr1_core.records import QUARANTINE_SCHEMA, records_to_table

    store = store_for(cfg)
    h = _h(cfg.data, cfg.limit)
    if store.stage_complete("records", h):
        return _summary(store, "records", skipped=True)
    records, quarantine = ingest_sources(cfg.data.sources, cfg.limit)
    eval_sources = {s.name for s in cfg.data.sources if s.role == "eval"}
    by_source: dict[str, list[dict]] = {}
    for r in records:
        by_source.setdefault(r["repo_name"], []).append(r)
    heldout, train = [], []
    for name, rows in sorted(by_source.items()):
        if name in eval_sources:
            heldout += rows
            continue
        k = min(cfg.data.eval_holdout, max(0, len(rows) - 1))
        train += rows[: len(rows) - k]
        heldout += rows[len(rows) - k :]
    for name in sorted({r["repo_name"] for r in train}):
        store.write_shard("records", name, records_to_table([r for r in train if r["repo_name"] == name]), cfg_hash=h, schema=None)
    store.write_shard("heldout", "heldout", records_to_table(heldout), cfg_hash=h)
    store.write_shard("quarantine", "quarantine", quarantine or [], cfg_hash=h, schema=QUARANTINE_SCHEMA)
    store.complete_stage("heldout", h)
    store.complete_stage("quarantine", h)
    store.complete_stage("records", h, {"quarantined": len(quarantine), "heldout": len(heldout)})
    return _summary(store, "records")


def _summary(store: Store, stage: str, skipped: bool = False) -> dict:
    m = store.stage_manifest(stage) or {}
    return {"stage": stage, "rows": m.get("rows", 0), "shards": [e["shard"] for e in m.get("shards", [])], "skipped": skipped, "uri": store.uri(stage)}


# ----------------------------------------------------------------------------- prompts
def stage_prompts(cfg: PipelineConfig) -> dict:
    from finr1_core.prompts import build_prompt
    from finr1_core.records import table_to_records

    store = store_for(cfg)
    h = _h(cfg.data, cfg.limit, cfg.prompts, cfg.distill.shard_size)
    if store.stage_complete("prompts", h):
        return _summary(store, "prompts", skipped=True)
    records = table_to_records(store.read_stage("records"))
    rows = [prompt_row(r, build_prompt(r, cfg.prompts)) for r in records]
    size = cfg.distill.shard_size
    for i in range(0, max(len(rows), 1), size):
        chunk = rows[i : i + size]
        if chunk:
            store.write_shard("prompts", f"shard-{i // size:05d}", chunk, cfg_hash=h)
    store.complete_stage("prompts", h)
    return _summary(store, "prompts")


def prompt_row(record: dict, p: dict) -> dict:
    return {
        "record_id": record["id"],
        "repo_name": record["repo_name"],
        "language": record.get("language"),
        "module": record.get("module"),
        "question": record["question"],
        "answer": record.get("answer"),
        "answer_type": record.get("answer_type"),
        "math_reasoning": bool(record.get("math_reasoning")),
        "messages": json.dumps(p["messages"], ensure_ascii=False),
        "prefix": p["prefix"],
        "prompt_template_version": p["prompt_template_version"],
        "prompt_hash": p["prompt_hash"],
    }


def _prompt_dicts(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        d = dict(r)
        if isinstance(d.get("messages"), str):
            d["messages"] = json.loads(d["messages"])
        out.append(d)
    return out


# ----------------------------------------------------------------------------- distill
def distill_hash(cfg: PipelineConfig) -> str:
    t = cfg.teacher
    return _h(cfg.data, cfg.limit, cfg.prompts, cfg.distill.shard_size, t.model, t.mode, t.temperature, t.top_p, t.max_tokens, t.n)


def stage_distill_shard(cfg: PipelineConfig, shard: str, base_url: str | None, progress_cb=None) -> dict:
    from finr1_core.distill import distill_shard

    store = store_for(cfg)
    prompts = _prompt_dicts(store.read_shard("prompts", shard).to_pylist())
    res = distill_shard(
        store,
        shard,
        prompts,
        cfg.teacher,
        cfg.distill,
        endpoints_for(cfg.teacher, base_url),
        cache_root=cfg.storage_root,
        tokenizer_path=cfg.teacher.tokenizer or cfg.teacher.model,
        progress_cb=progress_cb,
        cfg_hash=distill_hash(cfg),
    )
    return res if isinstance(res, dict) else res.as_dict()


def finish_stage(cfg: PipelineConfig, stage: str, expected_shards: list[str], h: str) -> dict:
    store = store_for(cfg)
    have = {e["shard"] for e in store.shards(stage)}
    missing = sorted(set(expected_shards) - have)
    if missing:
        raise RuntimeError(f"stage {stage}: {len(missing)} shard(s) not committed: {', '.join(missing[:10])}")
    store.complete_stage(stage, h)
    return _summary(store, stage)


# ----------------------------------------------------------------------------- score
def score_hash(cfg: PipelineConfig) -> str:
    j = cfg.judge
    return _h(distill_hash(cfg), cfg.filter.rel_tol, cfg.filter.judge_retries, j.model, j.temperature, j.max_tokens)


def stage_score_shard(cfg: PipelineConfig, shard: str, base_url: str | None) -> dict:
    from finr1_core.route import score_traces

    store = store_for(cfg)
    h = score_hash(cfg)
    if store.shard_committed("scored", shard, h):
        return {"shard": shard, "skipped": True}
    traces = store.read_shard("distill", shard).to_pylist()
    prompts = {p["record_id"]: p for p in store.read_shard("prompts", shard).to_pylist()}
    judge_client = client_for(cfg.judge, base_url, max_retries=cfg.judge.max_retries)
    rows = score_traces(traces, prompts, judge_client, cfg.filter)
    store.write_shard("scored", shard, rows, cfg_hash=h, source_shards=[shard])
    routes = {}
    for r in rows:
        routes[r["route"]] = routes.get(r["route"], 0) + 1
    return {"shard": shard, "rows": len(rows), "routes": routes, "skipped": False}


# ----------------------------------------------------------------------------- split + release
def stage_split(cfg: PipelineConfig) -> dict:
    """Route (already on each scored row), dedup, decontaminate against the held-out eval rows,
    write the ``sft``/``rl`` stages and release Financial-R1-Distill-Data with its card."""
    from finr1_core.dedup import dedup_and_decontaminate
    from finr1_core.release import RELEASE_SCHEMA, release_dataset, release_row

    store = store_for(cfg)
    h = _h(score_hash(cfg), cfg.filter)
    if store.stage_complete("release", h):
        m = store.stage_manifest("release")
        return {**m.get("summary", {}), "skipped": True}
    scored = store.read_rows("scored")
    eval_texts = {r["id"]: r["question"] for r in store.read_rows("heldout")}
    res = dedup_and_decontaminate(scored, eval_texts, cfg.filter)
    kept = {r["key"] for r in res.kept}
    routed = {"sft": [], "rl": []}
    for r in scored:
        if r["key"] in kept:
            routed["sft" if r["route"] == "sft" else "rl"].append(release_row(r))
    for split, rows in routed.items():
        store.write_shard(split, split, rows, cfg_hash=h, schema=RELEASE_SCHEMA, source_shards=["scored"])
        store.complete_stage(split, h)
    rel = release_dataset(scored, store.uri("release"), removals=res.removed, storage_options=store.storage_options)
    removed = res.counts()
    summary = {
        "scored": len(scored),
        "routed_sft": sum(1 for r in scored if r["route"] == "sft"),
        "routed_rl": sum(1 for r in scored if r["route"] == "rl"),
        "sft": len(routed["sft"]),
        "rl": len(routed["rl"]),
        "removed": removed,
        "release": rel["uri"],
        "card": rel["files"].get("card"),
    }
    store.complete_stage("release", h, {"summary": summary})
    return {**summary, "skipped": False}


# ----------------------------------------------------------------------------- training
def _model_dirs(cfg: PipelineConfig, name: str) -> tuple[Path, str]:
    """(local working dir, storage URI) of a checkpoint."""
    store = store_for(cfg)
    uri = store.uri("models", name)
    if store.fs.protocol in ("file", "local") or "file" in (store.fs.protocol or ()):
        return Path(store._p(uri)), uri
    return finr1_home() / "work" / cfg.run_id / "models" / name, uri


def _publish_model(cfg: PipelineConfig, local: Path, uri: str) -> None:
    store = store_for(cfg)
    if Path(store._p(uri)) == local:
        return
    store.fs.put(str(local), store._p(uri), recursive=True)


def _ready(local: Path) -> bool:
    return (local / ".finr1-done.json").exists()


def _mark(local: Path, info: dict) -> None:
    (local / ".finr1-done.json").write_text(json.dumps(info, indent=2, default=str))


def model_path(cfg: PipelineConfig, name: str) -> str | None:
    """Local path of a checkpoint (``None`` when the stage trained nothing, e.g. an empty SFT route)."""
    if name == "base":
        return cfg.train.base_model
    local, uri = _model_dirs(cfg, name)
    if not _ready(local):
        store = store_for(cfg)
        if store.exists(uri + "/.finr1-done.json"):
            local.mkdir(parents=True, exist_ok=True)
            store.fs.get(store._p(uri), str(local), recursive=True)
    if _ready(local) and json.loads((local / ".finr1-done.json").read_text()).get("empty"):
        return None
    return str(local)


def stage_sft(cfg: PipelineConfig) -> dict:
    from finr1_core.training import run_sft

    local, uri = _model_dirs(cfg, "sft")
    h = _h(cfg.train.base_model, cfg.train.sft, cfg.train.seed, score_hash(cfg), cfg.filter)
    if _ready(local) and json.loads((local / ".finr1-done.json").read_text()).get("hash") == h:
        return {**json.loads((local / ".finr1-done.json").read_text()), "skipped": True}
    rows = store_for(cfg).read_rows("sft")
    shutil.rmtree(local, ignore_errors=True)
    if not rows:
        # Nothing passed both filter rounds (the embedded 135M teacher rarely closes its think
        # block). Skipping is reported, never hidden: GRPO then starts from the base model.
        local.mkdir(parents=True, exist_ok=True)
        info = {"hash": h, "model": "sft", "path": None, "uri": None, "steps": 0, "rows": 0, "empty": True,
                "reason": "the SFT route is empty: no trace passed both filter rounds"}
        _mark(local, info)
        return {**info, "skipped": True}
    res = run_sft(cfg.train.base_model, rows, str(local), cfg.train.sft, seed=cfg.train.seed)
    info = {"hash": h, "model": "sft", "path": str(local), "uri": uri, "steps": res.steps, "train_loss": res.train_loss, "rows": res.rows, "seconds": round(res.seconds, 1)}
    _mark(local, info)
    _publish_model(cfg, local, uri)
    return {**info, "skipped": False}


def stage_grpo(cfg: PipelineConfig) -> dict:
    from finr1_core.training import run_grpo

    local, uri = _model_dirs(cfg, "grpo")
    h = _h(cfg.train.grpo, cfg.train.seed, score_hash(cfg), cfg.filter, cfg.train.sft, cfg.train.base_model)
    if _ready(local) and json.loads((local / ".finr1-done.json").read_text()).get("hash") == h:
        return {**json.loads((local / ".finr1-done.json").read_text()), "skipped": True}
    store = store_for(cfg)
    # GRPO prompts: RL rows first (what SFT could not learn), then SFT rows, as Fin-R1 did
    prompts = {p["record_id"]: p for p in store.read_rows("prompts")}
    ids = [r["record_id"] for r in store.read_rows("rl")] + [r["record_id"] for r in store.read_rows("sft")]
    seen, rows = set(), []
    for i in ids:
        if i in prompts and i not in seen and prompts[i].get("answer"):
            seen.add(i)
            rows.append(prompts[i])
    start = model_path(cfg, "sft") or cfg.train.base_model
    shutil.rmtree(local, ignore_errors=True)
    res = run_grpo(start, rows, str(local), cfg.train.grpo, seed=cfg.train.seed, think_prefix=cfg.prompts.think_prefix)
    rewards = [{k: v for k, v in e.items() if k.startswith("reward") or k in ("loss", "grad_norm")} for e in res.log_history if "reward" in e]
    info = {"hash": h, "model": "grpo", "path": str(local), "uri": uri, "init": start, "steps": res.steps, "train_loss": res.train_loss, "prompts": res.rows, "seconds": round(res.seconds, 1), "rewards": rewards}
    _mark(local, info)
    _publish_model(cfg, local, uri)
    return {**info, "skipped": False}


# ----------------------------------------------------------------------------- eval
def eval_sample(rows: list[dict], k: int) -> list[dict]:
    """Up to ``k`` held-out rows, taken round-robin across sources so every source is scored."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["repo_name"], []).append(r)
    out: list[dict] = []
    i = 0
    while len(out) < k and any(i < len(v) for v in by.values()):
        for name in sorted(by):
            if i < len(by[name]) and len(out) < k:
                out.append(by[name][i])
        i += 1
    return out


def stage_eval(cfg: PipelineConfig, model: str, base_url: str | None) -> dict:
    from finr1_core.evaluate import evaluate_model
    from finr1_core.judge import AnswerJudge
    from finr1_core.prompts import build_prompt
    from finr1_core.records import table_to_records

    store = store_for(cfg)
    path = model_path(cfg, model)
    if path is None:
        return {"model": model, "skipped": True, "rows": 0, "reason": f"no {model} checkpoint (stage trained nothing)"}
    h = _h(cfg.eval, path, (Path(path) / ".finr1-done.json").read_text() if (Path(path) / ".finr1-done.json").exists() else "")
    if store.shard_committed("eval", model, h):
        return {"model": model, "skipped": True, "rows": next(e["rows"] for e in store.shards("eval") if e["shard"] == model)}
    heldout = eval_sample(table_to_records(store.read_stage("heldout")), cfg.eval.max_rows)
    rows = [prompt_row(r, build_prompt(r, cfg.prompts)) for r in heldout]
    rows = _prompt_dicts(rows)
    role = cfg.teacher.model_copy(update={"model": path, "tokenizer": path, "endpoints": cfg.eval.endpoints})
    client = client_for(role, base_url)
    judge = AnswerJudge(client_for(cfg.judge, base_url)) if cfg.eval.use_judge else None
    sampling = Sampling(temperature=cfg.eval.temperature, top_p=1.0, max_tokens=cfg.eval.max_tokens)
    results = evaluate_model(client, rows, sampling, prefix=cfg.prompts.think_prefix, judge=judge, rel_tol=cfg.filter.rel_tol)
    for r in results:
        r["model"] = model
    store.write_shard("eval", model, results, cfg_hash=h)
    acc = sum(r["correct"] for r in results) / max(1, len(results))
    return {"model": model, "rows": len(results), "accuracy": acc, "skipped": False}


# ----------------------------------------------------------------------------- report
def stage_report(cfg: PipelineConfig, timings: dict[str, float] | None = None) -> dict:
    from finr1_core.evaluate import accuracy_table
    from finr1_core.release import distribution_table
    from finr1_core.report import render_report

    store = store_for(cfg)
    results: dict[str, list[dict]] = {}
    for e in store.shards("eval"):
        results[e["shard"]] = store.read_shard("eval", e["shard"]).to_pylist()
    order = [m for m in ("base", "sft", "grpo") if m in results] + [m for m in results if m not in ("base", "sft", "grpo")]
    acc = accuracy_table({m: results[m] for m in order})
    scored = store.read_rows("scored")
    sft, rl = store.read_rows("sft"), store.read_rows("rl")
    rel = (store.stage_manifest("release") or {}).get("summary", {})
    stage_counts = {
        "ingest (records)": _rows(store, "records"),
        "quarantine": _rows(store, "quarantine"),
        "heldout": _rows(store, "heldout"),
        "prompts": _rows(store, "prompts"),
        "distill": _rows(store, "distill"),
        "scored": _rows(store, "scored"),
        "sft": len(sft),
        "rl": len(rl),
    }
    n = len(scored) or 1
    pass_rates = {
        "round 1: answer correct (rule or judge)": sum(1 for r in scored if r.get("answer_correct")) / n if scored else None,
        "round 2: reasoning judge = 1": sum(1 for r in scored if r.get("reasoning_judge") == 1) / n if scored else None,
        "both rounds (SFT route)": sum(1 for r in scored if r.get("route") == "sft") / n if scored else None,
    }
    acct = _accounting(store)
    models = {m: model_path(cfg, m) or "–" for m in ("base", "sft", "grpo")}
    links = {s: store.uri(s) for s in ("records", "quarantine", "distill", "scored", "sft", "rl", "release", "eval")}
    links["report"] = store.uri("report", "report.md")
    md = render_report(
        run_id=cfg.run_id,
        storage_root=cfg.storage_root,
        profile=cfg.profile,
        stage_counts=stage_counts,
        accuracy=acc,
        distribution=distribution_table({"sft": sft, "rl": rl}),
        route_counts={"sft": len(sft), "rl": len(rl)},
        pass_rates=pass_rates,
        accounting=acct,
        removed=rel.get("removed", {}),
        links=links,
        timings=timings or {},
        models=models,
    )
    store.write_text(store.uri("report", "report.md"), md)
    store.write_json(store.uri("report", "summary.json"), {"accuracy": acc, "stage_counts": stage_counts, "pass_rates": pass_rates, "accounting": acct})
    return {"report": store.uri("report", "report.md"), "accuracy": acc, "stage_counts": stage_counts, "markdown": md}


def _rows(store: Store, stage: str) -> int:
    return sum(e["rows"] for e in store.shards(stage))


def _accounting(store: Store) -> dict:
    pt = ct = 0
    cost = 0.0
    for e in store.shards("distill"):
        x = e.get("extra", {})
        pt += int(x.get("prompt_tokens", 0))
        ct += int(x.get("completion_tokens", 0))
        cost += float(x.get("cost_usd", 0.0))
    return {"prompt tokens": pt, "completion tokens": ct, "cost (USD)": round(cost, 4)}
