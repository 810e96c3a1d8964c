"""What every finr1 task shares: the config as a plain dict, secrets, artifact keys, options.

Tasks take the validated config as a JSON-able dict, so Prefect shows it in the UI. Whether work
is skipped is decided in one place, by the store (``finr1_core.stages.run_stage``): a shard counts
as done only while its file is there and matches its index entry, so a lost or damaged shard is
rebuilt by the next run. Prefect's input cache is therefore off (it would hand back the result of
a shard whose file has since been lost); results are still persisted under the storage root, so
the UI and ``prefect flow-run retry`` can read them.
"""
from __future__ import annotations

import os

from prefect.cache_policies import NO_CACHE

from finr1_core.config import PipelineConfig
from finr1_core.llm import default_key_var

NOT_WORTH_RETRYING = ("stopped: no new request", "cannot be written")  # finr1_core.distill's stop and full-cache messages


def worth_retrying(task, task_run, state) -> bool:
    """A shard that failed because the run is stopping, or because its answers cannot be cached
    (a full disk), is not retried: a retry would send nothing, or pay for what it cannot keep."""
    return not any(m in (state.message or "") for m in NOT_WORTH_RETRYING)


SHARD_OPTS = dict(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=worth_retrying, persist_result=True, cache_policy=NO_CACHE)
STAGE_OPTS = dict(retries=1, retry_delay_seconds=5, persist_result=True, cache_policy=NO_CACHE)


def config_from(cfg: dict) -> PipelineConfig:
    """The task's config: validated, with secrets from Prefect blocks loaded into the environment."""
    return resolve_secrets(PipelineConfig.model_validate(cfg))


def resolve_secrets(c: PipelineConfig) -> PipelineConfig:
    """Endpoints whose key lives in a Prefect Secret block (teacher, judge, the eval's extra models):
    load it into this process's environment (never into the config, a result, a log or a file)
    under the endpoint's ``api_key_env``. A key already in the environment wins."""
    for endpoints in (c.teacher.endpoints, c.judge.endpoints, c.eval.models):
        for e in endpoints:
            if not e.api_key_secret:
                continue
            var = e.api_key_env or default_key_var(e.name)
            e.api_key_env = var
            if not os.environ.get(var):
                from prefect.blocks.system import Secret

                os.environ[var] = Secret.load(e.api_key_secret).get()
    return c


def artifact_key(s: str) -> str:
    """Artifact keys: lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")[:60]
