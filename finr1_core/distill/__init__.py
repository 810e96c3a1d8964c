"""Ray-parallel distillation with a durable response cache (exactly-once traces).

- :mod:`.keys`: request keys, the prompt text that enters them, parsing of a teacher's output;
- :mod:`.cache`: :class:`ResponseCache`, one JSON object per completed response;
- :mod:`.ray_runtime`: Ray start-up and clean shutdown, the scanning and ending of its processes;
- :mod:`.pool`: the teacher worker actors and their request queue;
- :mod:`.shard`: :func:`distill_shard`, one shard exactly once.
"""
from .cache import ResponseCache, response_cache_root
from .keys import effective_prefix, parse_trace, render_prompt_text, request_key, sampling_dict
from .pool import RequestQueue, TeacherWorker, drop_pool, run_requests, stop_requests, stopping, warm_workers, worker_pool
from .ray_runtime import child_processes, end_processes, install_exit_hooks, ray_init, ray_shutdown, remove_temp_dir, session_processes
from .shard import (
    STAGE,
    TRACE_SCHEMA,
    TRACE_SCHEMA_VERSION,
    DistillShardError,
    ShardResult,
    distill_shard,
    plan_shard,
    token_cost,
    trace_rows,
)

__all__ = [
    "STAGE",
    "TRACE_SCHEMA",
    "TRACE_SCHEMA_VERSION",
    "DistillShardError",
    "RequestQueue",
    "ResponseCache",
    "ShardResult",
    "TeacherWorker",
    "distill_shard",
    "child_processes",
    "drop_pool",
    "end_processes",
    "effective_prefix",
    "install_exit_hooks",
    "parse_trace",
    "plan_shard",
    "ray_init",
    "ray_shutdown",
    "remove_temp_dir",
    "render_prompt_text",
    "request_key",
    "response_cache_root",
    "run_requests",
    "sampling_dict",
    "session_processes",
    "stop_requests",
    "stopping",
    "token_cost",
    "trace_rows",
    "warm_workers",
    "worker_pool",
]
