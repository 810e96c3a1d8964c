"""The shape of the code: no import cycles, a Prefect-free library, no private names across
modules, and stage hashes that chain so a change invalidates exactly the downstream stages."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from finr1_core import stages
from finr1_core.config import REPO_ROOT

PACKAGES = ("finr1_core", "tasks", "flows")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (REPO_ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(REPO_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import in the file, at any depth (imports inside
    functions count: they hide cycles, they don't remove them)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([mod] if mod else []))
            out.append((mod, [a.name for a in node.names], node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    known = _modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for name, path in known.items():
        for mod, names, _ in _imports(name, path, known):
            for target in [f"{mod}.{n}" for n in names if f"{mod}.{n}" in known] or [mod]:
                if target in known and target != name:
                    graph[name].add(target)
    return graph


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert len(graph) > 30 and graph["flows.pipeline"] >= {"flows.phases", "flows.runs"}
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_check_sees_imports_inside_functions(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from finr1_core.stages import runner\n")
    assert ("finr1_core.stages", ["runner"], 2) in _imports("finr1_core.m", p, {})


def test_library_never_imports_prefect():
    known = _modules()
    bad = [f"{n}:{line}" for n, p in known.items() if n.startswith("finr1_core")
           for mod, _, line in _imports(n, p, known) if mod == "prefect" or mod.startswith("prefect.")]
    assert not bad, f"finr1_core imports prefect at {bad}"


def test_no_private_names_across_modules():
    known = _modules()
    bad = []
    for name, path in known.items():
        for mod, names, line in _imports(name, path, known):
            if mod.split(".")[0] in PACKAGES and mod != name:
                bad += [f"{name}:{line} imports {mod}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


# ------------------------------------------------------------------------------- stage hashes
def _hashes(**overrides) -> dict[str, str]:
    c = stages.load(str(REPO_ROOT / "configs" / "embedded.yaml"), run_id="h", **overrides)
    return {n: stages.stage_hash(c, n) for n in stages.STAGE_NAMES}


@pytest.mark.parametrize("key, value, first", [
    ("teacher.temperature", 0.9, "distill"),
    ("judge.max_tokens", 17, "score"),
    ("filter.minhash_threshold", 0.5, "split"),
    ("distill.shard_size", 3, "prompts"),
    ("limit", 3, "ingest"),
])
def test_a_changed_setting_invalidates_exactly_the_downstream_stages(key, value, first):
    before, after = _hashes(), _hashes(**{key: value})
    changed = [n for n in stages.STAGE_NAMES if before[n] != after[n]]
    assert changed == stages.downstream(first)  # the stage itself and everything after it, nothing before
    assert changed[0] == first and changed[-1] == "report"


def test_run_stage_skips_committed_work_and_redoes_it_after_a_change(tmp_path):
    c = stages.load(str(REPO_ROOT / "configs" / "embedded.yaml"), run_id="r", storage_root=str(tmp_path), limit=2)
    first = stages.run_stage(c, "ingest")
    assert first["skipped"] is False and first["rows"] > 0
    store = stages.store_for(c)
    committed = store.stage_manifest("records")["completed_at"]
    again = stages.run_stage(c, "ingest")
    assert again["skipped"] is True and again["rows"] == first["rows"]
    assert store.stage_manifest("records")["completed_at"] == committed  # nothing rewritten
    p1 = stages.run_stage(c, "prompts")
    assert p1["skipped"] is False and p1["shards"] == ["shard-00000"]
    c.distill.shard_size = 5  # prompts depend on it, ingest does not
    assert stages.run_stage(c, "ingest")["skipped"] is True
    p2 = stages.run_stage(c, "prompts")
    assert p2["skipped"] is False and len(p2["shards"]) == -(-p1["rows"] // 5)
    with pytest.raises(ValueError, match="runs per shard"):
        stages.run_stage(c, "distill")
    with pytest.raises(ValueError, match="unknown stage 'bogus'"):
        stages.run_stage(c, "bogus")
