"""Pipeline configuration: one pydantic model, loaded from YAML, validated before any work starts.

A bad key or value fails with one line naming the key and what was expected::

    config error: teacher.temperature: Input should be less than or equal to 2 (got 7)

Secrets (API keys) are never stored in the config: the config names an environment variable
(``api_key_env``) and the key is read from the environment when a client is built.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child ``python -m finr1_core...`` / ``-m flows...``: the
    repository first on ``PYTHONPATH``, plus ``extra``."""
    path = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, **extra}


def finr1_home() -> Path:
    return Path(os.environ.get("FINR1_HOME", Path.home() / ".cache" / "finr1")).expanduser()


def embedded_model_dir() -> Path:
    return finr1_home() / "models" / "SmolLM2-135M-Instruct-bf16"


class ConfigError(ValueError):
    """A config problem, always rendered as one line."""


# The pipeline's stages, in run order (what --stop-after accepts).
STAGES = ("ingest", "prompts", "distill", "score", "split", "sft", "grpo", "eval", "report")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_http_url(v: str) -> str:
    """``v`` if it is an http(s) URL with a host, else ValueError (one line)."""
    u = urlparse(v.strip())
    if u.scheme not in ("http", "https") or not u.hostname or " " in v.strip():
        raise ValueError("must be an http(s) URL such as http://host:8000/v1 (or null for the managed local server)")
    try:
        u.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ValueError("must be an http(s) URL with a valid port") from None
    return v.strip()


def check_run_id(v: str) -> str:
    if not RUN_ID_RE.match(v):
        raise ValueError("must be 1-128 characters: letters, digits, '.', '_' or '-', starting with a letter or digit")
    return v


def check_storage_root(v: str) -> str:
    """``v`` if it is a usable storage root, else ValueError (one line): an fsspec URI with a known
    protocol and a bucket, or a local path that is (or can become) a directory."""
    if not v or not v.strip():
        raise ValueError("must be a local path or an fsspec URI such as s3://bucket/prefix")
    if "://" in v and not v.startswith("file://"):
        import fsspec

        protocol, rest = v.split("://", 1)
        if protocol not in fsspec.available_protocols():
            raise ValueError(f"unknown storage protocol {protocol!r}: use a local path or s3://bucket/prefix")
        if not rest.strip("/"):
            raise ValueError(f"{protocol}:// needs a bucket, e.g. {protocol}://bucket/prefix")
        return v
    p = Path(v.removeprefix("file://")).expanduser()
    for q in (p, *p.parents):  # the path itself, or the first of its parents that exists, must be a directory
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                raise ValueError(f"{q} is a file, not a directory" if q == p else f"{q} (in the path) is a file, not a directory")
            break
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SECRET_OPTION_KEYS = ("key", "secret", "token", "password", "session_token", "access_key", "secret_key", "aws_access_key_id", "aws_secret_access_key")


class SourceSpec(_Strict):
    name: str = Field(description="Source name as listed by `finr1 sources`")
    path: str | None = Field(None, description="File or directory: a local path or an fsspec URI such as s3://bucket/dir")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for path (e.g. endpoint_url); credentials come from the environment, never from here",
    )
    hub_id: str | None = Field(None, description="Hugging Face dataset id (used when no path is given)")
    split: str | None = None
    max_rows: int | None = Field(None, ge=1, description="Per-source cap")
    role: Literal["train", "eval"] = "train"

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(k for k in v if k.lower() in SECRET_OPTION_KEYS)
        if bad:
            raise ValueError(f"must not hold credentials ({', '.join(bad)}): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment")
        return v


class DataConfig(_Strict):
    sources: list[SourceSpec] = Field(default_factory=list)
    eval_holdout: int = Field(4, ge=0, description="Rows per train source held out for evaluation")


class PromptConfig(_Strict):
    math_suffix_zh: str = "请一步步推理，并把最终答案放到 \\boxed{}。"
    math_suffix_en: str = "Please reason step by step, and put your final answer within \\boxed{}."
    think_prefix: str = "<think>\n"


class EndpointConfig(_Strict):
    name: str
    base_url: str | None = Field(None, description="OpenAI-compatible base URL; null = the managed local server")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key")
    api_key_secret: str | None = Field(
        None, description="Prefect Secret block holding the API key; resolved by the Prefect task, the environment variable wins"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        return None if v is None else check_http_url(v)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not ENV_NAME_RE.match(v):
            raise ValueError("must be an environment variable name (letters, digits, '_'), not the key itself")
        return v


class ServeConfig(_Strict):
    """How the pipeline gets its model servers. `managed` starts them itself: vLLM (one server per
    model, `engine: vllm`) or one `transformers serve` for every model (`engine: transformers`, and
    the fallback, announced in one line, where vLLM is not installed or does not start)."""

    kind: Literal["managed", "external"] = "managed"
    engine: Literal["vllm", "transformers"] = Field("transformers", description="What a managed server runs")
    vllm_python: str | None = Field(None, description="Python with vLLM (null: $FINR1_VLLM_PYTHON, else <repo>/.venv-vllm/bin/python)")
    reasoning_parser: str = Field("auto", description="vLLM reasoning parser; auto: deepseek_r1 with think tokens, else finr1_think")
    vllm_kv_cache_gib: int = Field(2, ge=1, description="KV cache of a CPU vLLM server (VLLM_CPU_KVCACHE_SPACE)")
    vllm_max_model_len: int | None = Field(4096, ge=256, description="vLLM --max-model-len (null: the model's own)")
    vllm_startup_timeout_s: float = Field(900, gt=0, description="vLLM start-up (37-215 s measured on a busy 2-core machine)")
    vllm_enforce_eager: bool | None = Field(None, description="vLLM --enforce-eager; null: eager on a host without a GPU (CPU start-up 74 s eager, 342 s compiled)")
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 = a free port")
    startup_timeout_s: float = Field(180, gt=0)
    continuous_batching: bool = True
    # On CPU, continuous batching sizes its paged KV cache from free memory (13.8 GB for the
    # 135M model, measured), so a server holding several checkpoints runs the machine out of
    # memory. A fixed cache: 2048 blocks x 32 tokens = 64k tokens (about 1.5 GB for SmolLM2-135M);
    # too few blocks for the streams in flight stalls the server (long FinQA prompts are ~1.5k tokens).
    cb_num_blocks: int = Field(2048, ge=1)
    cb_block_size: int = Field(32, ge=1)


class LLMRole(_Strict):
    model: str = Field(description="Model name sent in each request (for transformers serve: the served path)")
    endpoints: list[EndpointConfig] = Field(default_factory=lambda: [EndpointConfig(name="local")])
    mode: Literal["completions", "chat-prefill", "chat"] = "completions"
    tokenizer: str | None = Field(None, description="Tokenizer for local template rendering (completions mode)")
    temperature: float = Field(0.6, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    n: int = Field(1, ge=1, description="Samples per prompt")
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120, gt=0)
    max_retries: int = Field(5, ge=0)
    price_per_m_input: float = Field(0.0, ge=0)
    price_per_m_output: float = Field(0.0, ge=0)
    rpm: float | None = Field(None, gt=0, description="Requests per minute per endpoint (null = no limit)")
    tpm: float | None = Field(None, gt=0, description="Tokens per minute per endpoint (null = no limit)")
    tokens_per_s: float | None = Field(
        None, gt=0, description="Aggregate generation throughput of all endpoints (output tokens/s), for dry-run wall-time estimates"
    )
    backoff_base_s: float = Field(0.5, gt=0, description="First retry delay; doubles per attempt, with jitter")
    backoff_max_s: float = Field(20.0, gt=0)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[EndpointConfig]) -> list[EndpointConfig]:
        if not v:
            raise ValueError("needs at least one endpoint")
        names = [e.name for e in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"endpoint names must be unique (repeated: {', '.join(dup)})")
        return v

    @model_validator(mode="after")
    def _backoff(self) -> "LLMRole":
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(f"backoff_max_s ({self.backoff_max_s}) must be >= backoff_base_s ({self.backoff_base_s})")
        return self


class DistillConfig(_Strict):
    shard_size: int = Field(64, ge=1)
    ray_address: str | None = Field(None, description="null = local Ray; 'auto' or 'ray://host:10001' for a cluster")
    num_workers: int = Field(2, ge=1, description="Ray actors per shard")
    ray_num_cpus: int | None = Field(None, ge=1)


class FilterConfig(_Strict):
    rel_tol: float = Field(0.01, ge=0)
    judge_retries: int = Field(2, ge=0)
    minhash_threshold: float = Field(0.85, gt=0, le=1)
    minhash_ngram: int = Field(5, ge=1)
    decontam_ngram: int = Field(13, ge=1)


class TrainStageConfig(_Strict):
    """One training stage: a TRL recipe file plus a few overrides, and how it is launched."""

    recipe: str = Field(description="TRL-style recipe YAML (configs/recipes/<model>/<method>.yaml)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Recipe fields replaced for this run (like --set key=value)")
    num_processes: int = Field(1, ge=1, description="Training processes (GPUs; CPU processes over gloo on a CPU host)")
    launcher: Literal["accelerate", "ray"] = Field("accelerate", description="accelerate (accelerate launch) | ray (Ray Train TorchTrainer on RAY_ADDRESS or a local Ray)")
    accelerate_config: str | None = Field(None, description="Accelerate config (DeepSpeed ZeRO-3 in infra/accelerate/); null = plain DDP")


class SFTConfig(TrainStageConfig):
    recipe: str = "${REPO}/configs/recipes/smollm2-135m/sft.yaml"


class GRPOConfig(TrainStageConfig):
    recipe: str = "${REPO}/configs/recipes/smollm2-135m/grpo.yaml"


class TrainConfig(_Strict):
    base_model: str = Field(description="Student model: a local directory or a hub id (replaces the recipe's model_name_or_path)")
    sft: SFTConfig = Field(default_factory=SFTConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    seed: int = 0


class EvalModelConfig(_Strict):
    """An extra model evaluated beside the run's own checkpoints: an OpenAI-compatible endpoint."""

    name: str = Field(description="Row name in the results table")
    base_url: str = Field(description="OpenAI-compatible base URL")
    model: str = Field(description="Model name the endpoint serves")
    mode: Literal["completions", "chat-prefill", "chat"] = "chat"
    api_key_env: str | None = Field(None, description="Environment variable holding the API key")
    api_key_secret: str | None = Field(None, description="Prefect Secret block holding the API key (resolved by the task)")


class EvalConfig(_Strict):
    endpoints: list[EndpointConfig] = Field(
        default_factory=lambda: [EndpointConfig(name="local")],
        description="Where the student checkpoints are served (no base_url = finr1 serves them itself, see `server`)",
    )
    server: Literal["transformers", "vllm"] = Field(
        "transformers", description="What serves a local checkpoint for the eval: `transformers serve` (CPU) or `vllm serve` (GPU)"
    )
    models: list[EvalModelConfig] = Field(default_factory=list, description="Extra endpoints evaluated beside base/sft/grpo")
    benchmarks: list[str] = Field(default_factory=list, description="Named benchmarks (finr1 eval) run beside the held-out rows")
    data: dict[str, str] = Field(default_factory=dict, description="benchmark or source name -> path (as `finr1 ingest --path`)")
    max_rows: int = Field(12, ge=1, description="Held-out rows evaluated per model (and rows per named benchmark)")
    max_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    samples: int = Field(1, ge=1, description="Samples per row; accuracy is Pass@1 averaged over them")
    max_concurrency: int = Field(8, ge=1, description="Requests in flight per endpoint")
    timeout_s: float = Field(300, gt=0)
    max_retries: int = Field(3, ge=0)
    use_judge: bool = Field(True, description="Send rows the rules cannot decide to the answer judge (the `judge` role)")
    reference: bool = Field(True, description="Show Fin-R1's published numbers as labelled reference rows")


class PipelineConfig(_Strict):
    profile: str = "embedded"
    storage_root: str = Field("runs", description="fsspec URI: a local path or s3://bucket/prefix")
    run_id: str | None = None
    limit: int | None = Field(None, ge=1, description="Cap rows per source (quick runs)")
    data: DataConfig = Field(default_factory=DataConfig)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    teacher: LLMRole
    judge: LLMRole
    distill: DistillConfig = Field(default_factory=DistillConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    train: TrainConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("storage_root")
    @classmethod
    def _root(cls, v: str) -> str:
        return check_storage_root(v)

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v: str | None) -> str | None:
        return None if v is None else check_run_id(v)

    @model_validator(mode="after")
    def _cross_checks(self) -> "PipelineConfig":
        if self.serve.kind == "external":
            for role in ("teacher", "judge"):
                for i, ec in enumerate(getattr(self, role).endpoints):
                    if not ec.base_url:
                        raise ValueError(f"{role}.endpoints.{i}.base_url: required when serve.kind is external (no managed local server)")
        check_sources(self.data.sources)
        return self

    def public_dict(self) -> dict:
        """The config as written to manifests and reports: it never holds secrets by design."""
        return self.model_dump(mode="json")


def check_sources(sources: list[SourceSpec]) -> None:
    """Every source is a known one, and none is listed twice with the same role."""
    from finr1_core.sources import SOURCES

    seen: set[tuple[str, str]] = set()
    for i, s in enumerate(sources):
        if s.name not in SOURCES:
            raise ValueError(f"data.sources.{i}.name: unknown source {s.name!r} (see `finr1 sources`)")
        if (s.name, s.role) in seen:
            raise ValueError(f"data.sources.{i}.name: source {s.name!r} is listed twice")
        seen.add((s.name, s.role))


_EMBEDDED_TOKENS = {"${EMBEDDED_MODEL}": lambda: str(embedded_model_dir()), "${REPO}": lambda: str(REPO_ROOT)}


def expand_tokens(obj: Any) -> Any:
    """Expand ``${EMBEDDED_MODEL}`` and ``${REPO}`` in every string of a parsed YAML tree."""
    if isinstance(obj, str):
        for tok, fn in _EMBEDDED_TOKENS.items():
            if tok in obj:
                obj = obj.replace(tok, fn())
        return obj
    if isinstance(obj, list):
        return [expand_tokens(x) for x in obj]
    if isinstance(obj, dict):
        return {k: expand_tokens(v) for k, v in obj.items()}
    return obj


def _one_line(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "<root>"
    msg = e["msg"]
    if e["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        m = re.match(r"^([\w.]+): (.*)$", msg)
        if m and loc == "<root>":  # a cross-field check names its own field
            loc, msg = m.group(1), m.group(2)
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    got = e.get("input")
    got_s = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    return f"config error: {loc}: {msg}{got_s}{more}"


def one_line_error(err: ValidationError) -> str:
    """A pydantic validation error as the one-line ``config error: KEY: ...`` message."""
    return _one_line(err)


def read_yaml_mapping(path: Path, shown: str | Path, error: type[Exception], prefix: str) -> dict:
    """A YAML file whose top level is a mapping; ``error("<prefix>: ...")`` in one line otherwise."""
    if not path.exists():
        raise error(f"{prefix}: file not found: {shown}")
    if path.is_dir():
        raise error(f"{prefix}: {shown} is a directory, not a YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise error(f"{prefix}: {shown}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise error(f"{prefix}: {shown}: not UTF-8 text") from None
    except OSError as e:
        raise error(f"{prefix}: {shown}: cannot read ({e.strerror or type(e).__name__})") from None
    if not isinstance(raw, dict):
        raise error(f"{prefix}: {shown}: top level must be a mapping")
    return raw


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> PipelineConfig:
    """Load, expand ``${EMBEDDED_MODEL}``/``${REPO}`` and validate. Raises ConfigError (one line)."""
    path = Path(path) if path else REPO_ROOT / "configs" / "embedded.yaml"
    raw = expand_tokens(read_yaml_mapping(path, path, ConfigError, "config error"))
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        cur = raw
        parts = k.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = v
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from None
