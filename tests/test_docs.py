"""Docs that match the code, checked cheaply: nothing is run, no server is started.

Over README.md, docs/*.md and infra/**/*.md:

- every ``finr1 ...`` command line parses against the real typer CLI (``flows/cli.py``): the
  command path, every option name, the number of arguments, and in code blocks the option values'
  types and the required options too (click's ``make_context``, which parses without invoking);
- every ``python -m finr1_core.training ...`` line (also after ``accelerate launch ... -m``) parses
  with the entry point's own argument parser;
- every config key path (``train.sft.accelerate_config``, ``teacher.endpoints.0.base_url``, a
  ``retry-failed --set KEY=VALUE``) exists in the config model (``finr1_core/config.py``);
- every repository path (``finr1_core/...``, ``configs/...``, ``infra/...``, a relative link) exists,
  and a ``file.py:name`` names something defined in that file;
- the package version is the CHANGELOG's newest numbered one and the image tags in infra/ use it;
- README's end-of-run example is what ``finr1 run`` prints (``flows/cli.py:run_summary``).

Synopsis notation is read as such: ``[--opt X]`` is optional, ``a|b`` alternatives, ``X ...`` a
repetition, and an upper-case value (``N``, ``RUN_ID``) a placeholder.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import re
import shlex
import subprocess
import tomllib
import types
import typing
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import pytest
import typer
from pydantic import BaseModel

from finr1_core.config import PipelineConfig
from finr1_core.training.__main__ import build_parser
from flows.cli import app, run_summary

REPO = Path(__file__).resolve().parent.parent
DOC_GLOBS = ("README.md", "docs/*.md", "infra/**/*.md")
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "text"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")


# ------------------------------------------------------------------------- reading Markdown
@dataclass
class Doc:
    path: Path
    code_lines: list[tuple[int, str]] = field(default_factory=list)  # shell lines of fenced blocks (continuations joined)
    code_tokens: list[tuple[int, str]] = field(default_factory=list)  # tokens of every fenced block but mermaid
    spans: list[tuple[int, str]] = field(default_factory=list)  # inline `code` outside fenced blocks
    links: list[tuple[int, str]] = field(default_factory=list)  # [text](target) and ![alt](target)

    @property
    def rel(self) -> str:
        return self.path.relative_to(REPO).as_posix()


def strip_comment(line: str) -> str:
    return re.split(r"(?:^|\s)#(?:\s|$)", line, maxsplit=1)[0].rstrip()


def read_doc(path: Path, text: str | None = None) -> Doc:
    """``path``'s Markdown (or ``text``, read as if it were at ``path``)."""
    doc = Doc(path)
    prose: list[str] = []
    fence, lang, pending, pending_no = None, "", "", 0
    for no, line in enumerate((path.read_text(encoding="utf-8") if text is None else text).splitlines(), 1):
        m = re.match(r"^\s*(```+|~~~+)\s*([\w-]*)", line)
        if fence is None and m:
            fence, lang = m.group(1), m.group(2).lower()
            prose.append("")
            continue
        if fence is not None and line.strip().startswith(fence):
            fence = None
            prose.append("")
            continue
        if fence is None:
            prose.append(line)
            continue
        prose.append("")
        if lang != "mermaid":
            doc.code_tokens += [(no, t) for t in line.split()]
        if lang in SHELL_LANGS:
            shell = strip_comment(line)
            if shell.endswith("\\"):
                pending, pending_no = pending + shell[:-1] + " ", pending_no or no
                continue
            doc.code_lines.append((pending_no or no, pending + shell))
            pending, pending_no = "", 0
    body = "\n".join(prose)
    for m in re.finditer(r"(?<!`)`([^`]+?)`(?!`)", body):
        if "\n\n" not in m.group(1):
            doc.spans.append((body.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())))
    for m in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", body):
        doc.links.append((body.count("\n", 0, m.start()) + 1, m.group(1)))
    return doc


def doc_paths() -> list[Path]:
    return sorted({p for g in DOC_GLOBS for p in REPO.glob(g)})


DOCS = [read_doc(p) for p in doc_paths()]


def where(doc: Doc, no: int) -> str:
    return f"{doc.rel}:{no}"


# ------------------------------------------------------------------------- command lines
def split_commands(text: str) -> list[list[str]]:
    """Shell words of each command in ``text`` (split at &&, ||, ; and |), leading VAR=value dropped."""
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    out, cur = [], []
    for w in words + [";"]:
        if w in ("&&", "||", ";", "|"):
            while cur and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", cur[0]):
                cur.pop(0)
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(w)
    return out


def entry_args(words: list[str]) -> tuple[str, list[str]] | None:
    """("finr1" | "training", the arguments) when these words run the finr1 CLI or the training entry point."""
    if Path(words[0]).name == "finr1":
        return "finr1", words[1:]
    for i, w in enumerate(words[:-1]):
        if w == "-m" and words[i + 1] == "flows.cli":
            return "finr1", words[i + 2:]
        if w == "-m" and words[i + 1] == "finr1_core.training":
            return "training", words[i + 2:]
    return None


def normalise(args: list[str]) -> list[list[str]]:
    """Synopsis notation to plain argument lists: brackets dropped, ``a|b`` expanded, a repetition
    marker (``...`` after a value) dropped."""
    out: list[str] = []
    for a in args:
        a = a.lstrip("[").rstrip("]")
        if not a:
            continue
        if a in ("...", "…") and out and not out[-1].startswith("-"):
            continue
        out.append(a)
    choices = [a.split("|") if "|" in a and "://" not in a else [a] for a in out]
    return [list(c) for c in itertools.islice(itertools.product(*choices), 16)]


ROOT = typer.main.get_command(app)


# typer (0.29) carries its own copy of click: the objects are read by their attributes.
def _is_group(cmd) -> bool:
    return hasattr(cmd, "commands")


def _leaf(args: list[str]):
    """The command these arguments name, its path and the rest of the arguments."""
    cmd, path = ROOT, ["finr1"]
    args = list(args)
    while _is_group(cmd) and args and not args[0].startswith("-"):
        sub = cmd.commands.get(args[0])
        if sub is None:
            raise ValueError(f"`{' '.join(path)}` has no command {args[0]!r} (it has: {', '.join(cmd.commands)})")
        cmd, path, args = sub, path + [args.pop(0)], args
    return cmd, path, args


def _options(cmd) -> dict:
    return {o: p for p in cmd.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}


def _takes_value(p, name: str) -> bool:
    return not p.is_flag and not getattr(p, "count", False) and name not in p.secondary_opts


def _numeric(p) -> bool:
    ann = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    if ann is None:  # typer on the click package
        return getattr(getattr(p, "type", None), "name", "") in ("integer", "float", "integer range", "float range")
    return any(a in (int, float) for a in (typing.get_args(ann) or (ann,)))


def check_finr1(args: list[str], complete: bool) -> list[str]:
    """Problems with one ``finr1`` argument list. ``complete``: a whole command line (code block),
    parsed fully; otherwise a mention in prose, whose path and option names are checked."""
    cmd, path, rest = _leaf(args)
    opts = _options(cmd)
    problems, positional, i = [], 0, 0
    fixed = list(args[: len(args) - len(rest)])
    while i < len(rest):
        tok = rest[i]
        if tok.startswith("-") and len(tok) > 1:
            name = tok.split("=", 1)[0]
            p = opts.get(name)
            if name == "--help":
                fixed.append(tok)
            elif p is None:
                problems.append(f"`{' '.join(path)}` has no option {name} (it has: {', '.join(sorted(opts))})")
            elif _takes_value(p, name) and "=" not in tok and i + 1 < len(rest):
                value = rest[i + 1]
                if _numeric(p) and PLACEHOLDER.match(value):
                    value = "1"  # `--limit N`
                if name == "--set" and path[-1] == "retry-failed":
                    problems += check_key(value.split("=", 1)[0], f"`finr1 retry-failed --set {value}`")
                fixed += [name, value]
                i += 1
            else:
                fixed.append(tok)
        else:
            positional += 1
            fixed.append(tok)
        i += 1
    if problems or not complete:
        nargs = [p.nargs for p in cmd.params if p.param_type_name == "argument"]
        if not complete and -1 not in nargs and positional > sum(nargs):
            problems.append(f"`{' '.join(path)}` takes {sum(nargs)} argument(s), the doc gives {positional}")
        return problems
    return parse_finr1(fixed)


def parse_finr1(args: list[str]) -> list[str]:
    """click's own parse of a whole command line (types, required options), without invoking it."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            ctx, cmd = ROOT.make_context("finr1", list(args)), ROOT
            while _is_group(cmd):
                rest = [*ctx._protected_args, *ctx.args]
                if not rest:
                    break
                name, cmd, rest = cmd.resolve_command(ctx, rest)
                ctx = cmd.make_context(name, rest, parent=ctx)
        except typer.Exit as e:  # --help
            return [] if e.exit_code == 0 else [f"`finr1 {' '.join(args)}` exits {e.exit_code}"]
        except Exception as e:  # click's UsageError and kin (typer's copy)
            if not hasattr(e, "format_message"):
                raise
            return [f"`finr1 {' '.join(args)}`: {e.format_message()}"]
    return []


def check_training(args: list[str]) -> list[str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(args)
        except SystemExit as e:
            if e.code:
                return [f"`python -m finr1_core.training {' '.join(args)}`: {err.getvalue().strip().splitlines()[-1]}"]
    return []


def command_problems(doc: Doc) -> list[str]:
    found = [(no, text, True) for no, text in doc.code_lines]
    found += [(no, text, False) for no, text in doc.spans if re.match(r"finr1 (-|[a-z])", text) or "-m finr1_core.training " in text]
    problems = []
    for no, text, complete in found:
        for words in split_commands(text):
            hit = entry_args(words)
            if hit is None or (hit[0] == "training" and not hit[1]):
                continue  # not a command of ours, or a mention of the module alone
            for args in normalise(hit[1]):
                try:
                    msgs = check_finr1(args, complete) if hit[0] == "finr1" else check_training(args)
                except ValueError as e:
                    msgs = [str(e)]
                problems += [f"{where(doc, no)}: {m}" for m in msgs]
    return problems


# ------------------------------------------------------------------------- config keys
TOP_KEYS = set(PipelineConfig.model_fields)
FILE_SUFFIX = re.compile(r"\.(md|py|ya?ml|json|txt|png|toml|parquet|jsonl)$")


def _resolve(ann, parts: list[str]) -> bool:
    if not parts:
        return True
    origin, targs = typing.get_origin(ann), typing.get_args(ann)
    if ann is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_resolve(a, parts) for a in targs if a is not type(None))
    if origin is list:
        return bool(re.fullmatch(r"\d+|<\w+>", parts[0])) and _resolve(targs[0], parts[1:])
    if origin is dict:
        return _resolve(targs[1], parts[1:])
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        head, fields = parts[0], ann.model_fields
        if re.fullmatch(r"<\w+>", head):  # train.<method>.launcher
            return any(_resolve(f.annotation, parts[1:]) for f in fields.values())
        return head in fields and _resolve(fields[head].annotation, parts[1:])
    return False


def check_key(key: str, shown: str) -> list[str]:
    if PLACEHOLDER.match(key):
        return []
    if not _resolve(PipelineConfig, key.split(".")):
        return [f"{shown}: {key} is not a config key (finr1_core/config.py)"]
    return []


def config_keys(doc: Doc) -> list[tuple[int, str]]:
    out = []
    for no, text in doc.spans:
        m = re.fullmatch(r"([a-z_]+(?:\.(?:[a-z0-9_]+|<\w+>))+)(?:\s*[:=].*)?", text)
        if m and m.group(1).split(".")[0] in TOP_KEYS and not FILE_SUFFIX.search(m.group(1)):
            out.append((no, m.group(1)))
    return out


# ------------------------------------------------------------------------- repository paths
def repo_files() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True, timeout=60).stdout.split("\n")
        files = {f for f in out if f and (REPO / f).exists()}
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", ".venv-webui", "runs", ".pytest_cache", "__pycache__"}
        files = {p.relative_to(REPO).as_posix() for p in REPO.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO).parts)}
    return files


FILES = repo_files()
DIRS = {"/".join(f.split("/")[:i]) for f in FILES for i in range(1, f.count("/") + 1)}
PATH_RE = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.<>{},*-]+)+/?(?::[A-Za-z_]\w*)?(?:#[\w-]+)?")


def _expand(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*,[^{}]*)\}", pattern)
    if not m:
        return [re.sub(r"<[^<>/]+>", "*", pattern)]
    return [x for alt in m.group(1).split(",") for x in _expand(pattern[: m.start()] + alt + pattern[m.end():])]


def _exists(rel: str) -> bool:
    rel = rel.rstrip("/")
    out = []
    for pat in _expand(rel):
        if "*" in pat:
            out.append(any(fnmatch(f, pat) for f in FILES | DIRS))
        else:
            out.append(pat in FILES or pat in DIRS)
    return all(out)


def _defines(rel: str, name: str) -> bool:
    text = (REPO / rel).read_text(encoding="utf-8")
    return bool(re.search(rf"^\s*(?:async\s+def|def|class)\s+{name}\b|^{name}\s*[:=]", text, re.M))


def path_problems(doc: Doc) -> list[str]:
    base = doc.path.parent.relative_to(REPO).as_posix()
    base = "" if base == "." else base + "/"
    problems = []
    tokens = [(no, t) for no, text in doc.spans for t in text.split()] + doc.code_tokens
    for no, tok in tokens:
        tok = tok.strip("'\"()[],;").removeprefix("${REPO}/").rstrip(".:")
        if "://" in tok or not PATH_RE.fullmatch(tok):
            continue
        path, _, anchor = tok.partition("#")
        path, _, symbol = path.partition(":")
        first = path.split("/")[0]
        # relative to the doc's folder (infra/README.md: `docker/Dockerfile`) only for a file name with an extension
        near = base and (base + first) in DIRS and (path.endswith("/") or "." in path.rsplit("/", 1)[-1])
        candidates = ([path] if first in DIRS else []) + ([base + path] if near else [])
        if not candidates:
            continue  # not a repository path (runs/..., <storage_root>/..., release/RUN)
        hit = next((c for c in candidates if _exists(c)), None)
        if hit is None:
            problems.append(f"{where(doc, no)}: {path} does not exist in the repository")
        elif symbol and hit.endswith(".py") and not _defines(hit, symbol):
            problems.append(f"{where(doc, no)}: {hit} defines no {symbol}")
    for no, target in doc.links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor in this page
        path = (doc.path.parent / target.split("#")[0]).resolve()
        if not path.exists() or REPO not in path.parents:
            problems.append(f"{where(doc, no)}: link target {target} does not exist in the repository")
    return problems


# ------------------------------------------------------------------------- the tests
def test_the_docs_are_read():
    names = {d.rel for d in DOCS}
    assert {"README.md", "docs/operating.md", "docs/distill.md", "infra/README.md", "infra/train/README.md"} <= names
    readme = next(d for d in DOCS if d.rel == "README.md")
    assert any(t.startswith("finr1 run ") for _, t in readme.code_lines)
    assert sum(1 for d in DOCS for _, t in d.code_lines if t.lstrip().startswith("finr1 ")) >= 20


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.rel)
def test_commands_parse(doc):
    problems = command_problems(doc)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.rel)
def test_config_keys_exist(doc):
    problems = [p for no, key in config_keys(doc) for p in check_key(key, where(doc, no))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.rel)
def test_repository_paths_exist(doc):
    problems = path_problems(doc)
    assert not problems, "\n".join(problems)


def test_version_is_the_changelogs():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    import finr1_core

    newest = re.search(r"^## (\d+\.\d+\.\d+)", (REPO / "CHANGELOG.md").read_text(), re.M).group(1)
    assert finr1_core.__version__ == version == newest
    tags = {(f, t) for f in FILES if f.startswith("infra/") for t in re.findall(r"finr1:(\d+\.\d+\.\d+)", (REPO / f).read_text(errors="replace"))}
    assert tags and {t for _, t in tags} == {version}, sorted(tags)


def test_readme_end_of_run_output_is_what_finr1_run_prints():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```\n─+ finr1 run complete ─+\n(.*?)```", text, re.S).group(1).splitlines()
    out = {"run_id": re.match(r"run id:   (\S+)$", block[0]).group(1)}
    out["report"] = re.match(r"report:   (\S+)$", block[1]).group(1)
    out["storage"] = out["report"].removesuffix("/report/report.md")
    out["timings"] = {m.group(1): float(m.group(2)) for ln in block if (m := re.match(r"  (\S.*?)\s+([\d.]+) s$", ln))}
    total = float(re.match(r"total:    ([\d.]+) s$", block[-1]).group(1))
    assert out["timings"] and run_summary(out, total) == block


# ------------------------------------------------------------------------- the checkers catch things
def test_checkers_flag_a_broken_doc():
    doc = read_doc(REPO / "docs" / "broken.md", "\n".join([
        "```bash",
        "finr1 run --config configs/embedded.yaml --stop-after split        # fine",
        "finr1 run --confg configs/embedded.yaml",
        "finr1 train sft --recipe R --output O --num-processes many",
        "finr1 eval --out runs/x",
        "finr1 retry-failed RUN --set teacher.temprature=0.7",
        "accelerate launch --config_file infra/accelerate/zero3-single-node.yaml \\",
        "  -m finr1_core.training sft --config configs/production.yaml --run-id RUN",
        "```",
        "Keys `train.sft.deepspeed` and `train.<method>.accelerate_config`, `distill.num_workrs: 2`.",
        "Mentions `finr1 server start` and `finr1 check RUN_ID --deep`, modules `finr1_core/distill.py`,",
        "`finr1_core/llm/`, `flows/runs.py:open_run`, `flows/runs.py:bound_stages`, [a](nowhere.md), [b](eval.md#x).",
    ]))
    problems = command_problems(doc)
    assert len(problems) == 7, "\n".join(problems)
    for needle in ("no option --confg", "Invalid value for '--num-processes'", "Missing option '--model'",
                   "teacher.temprature is not a config key", "required: --recipe, --output", "no command 'start'",
                   "has no option --deep"):
        assert sum(needle in p for p in problems) == 1, (needle, problems)
    keys = [p for no, key in config_keys(doc) for p in check_key(key, where(doc, no))]
    assert [k.split(": ", 1)[1] for k in keys] == ["train.sft.deepspeed is not a config key (finr1_core/config.py)",
                                                   "distill.num_workrs is not a config key (finr1_core/config.py)"]
    paths = path_problems(doc)
    assert [p.split(": ", 1)[1] for p in paths] == ["finr1_core/distill.py does not exist in the repository",
                                                    "flows/runs.py defines no bound_stages",
                                                    "link target nowhere.md does not exist in the repository"], paths
