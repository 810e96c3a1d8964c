"""Training as its own job: ``accelerate launch`` or Ray Train's ``TorchTrainer``, in a subprocess streamed line by line.

:func:`train` is what the pipeline's training stage and ``finr1 train`` call. Every output line of
every rank goes to ``on_line`` (the Prefect task passes its logger); a failure raises
:class:`TrainingFailed` carrying the trainer's last error line. A re-run with the same output
resumes from the last complete checkpoint.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
from typing import Callable

from finr1_core.config import REPO_ROOT, repo_env
from finr1_core.training import checkpoints
from finr1_core.training.recipes import RecipeError, load_recipe, parse_set, read_yaml
from finr1_core.training.runner import RESULT_FILE

_ERROR_LINE = re.compile(r"(^finr1-train error:|\b\w*(Error|Exception)\b:?|Traceback|Killed|CUDA out of memory)")


_LAUNCHER_NOISE = re.compile(r"Traceback|CalledProcessError|returned non-zero exit status|ChildFailedError|^\s*raise |^\s*File ")


LAUNCHERS = ("accelerate", "ray")


class TrainingFailed(RuntimeError):
    """The training job failed; the message is the trainer's last error line."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_threads_per_process(num_processes: int) -> int:
    """This process's usable cores shared out between ``num_processes`` training processes (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, num_processes))


def accelerate_command(method: str, args: list[str], num_processes: int | None, accelerate_config: str | None) -> list[str]:
    """``accelerate launch`` for ``python -m finr1_core.training``: DeepSpeed (or any accelerate set-up)
    from a config file, DDP on GPUs, or N CPU processes over gloo on a CPU host.

    With a config file, ``num_processes=None`` keeps the file's own process count; a number overrides it.
    On a CPU host each process gets an equal share of the cores as its thread count: accelerate sets
    ``OMP_NUM_THREADS=1`` otherwise (it shares out cores only with ``--cpu``), and a 1-process job ran
    on one core of two (``$OMP_NUM_THREADS``, when set, wins).
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port())]
    if not os.environ.get("OMP_NUM_THREADS") and not _cuda():
        n = num_processes or (int(read_yaml(accelerate_config).get("num_processes") or 1) if accelerate_config else 1)
        cmd += ["--num_cpu_threads_per_process", str(cpu_threads_per_process(n))]
    if accelerate_config:
        cmd += ["--config_file", accelerate_config]
        if num_processes is not None:
            cmd += ["--num_processes", str(num_processes)]
    else:
        num_processes = num_processes or 1
        cmd += ["--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if num_processes > 1:
            cmd += ["--multi_gpu"]  # torchrun-style launch; on a CPU host the ranks join over gloo
    return cmd + ["-m", "finr1_core.training", method, *args]


def check_accelerate_config(path: str | None) -> None:
    """One line, before anything starts, when the accelerate config cannot be used."""
    if not path:
        return
    if os.path.isdir(path):
        raise RecipeError(f"recipe error: accelerate_config: {path} is a directory, not a config file")
    cfg = read_yaml(path)
    ds_file = (cfg.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if ds_file and not (os.path.isfile(ds_file) or (REPO_ROOT / ds_file).is_file()):
        raise RecipeError(f"recipe error: accelerate_config: {path} names deepspeed_config_file {ds_file}, which is not a file")
    if cfg.get("distributed_type") == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise RecipeError(f"recipe error: accelerate_config: {path} runs DeepSpeed, which is not installed (the gpu extra: pip install -e '.[gpu]')")


def resolve_ray_address(configured: str | None) -> str | None:
    """The Ray cluster a Ray Train job joins: the configured address, else ``RAY_ADDRESS``, else the
    Ray this process already runs (the one distillation used); None starts a local Ray."""
    if configured:
        return configured
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            return ray.get_runtime_context().gcs_address
        except Exception:  # a Ray Client connection has no GCS address here
            return None
    return None


def ray_command(method: str, args: list[str], num_workers: int, storage: str, address: str | None = None) -> list[str]:
    """Ray Train's ``TorchTrainer`` over ``num_workers`` ranks (GPUs when CUDA is here), on the cluster
    at ``address`` or a local Ray (:mod:`finr1_core.training.ray_launch`)."""
    cmd = [sys.executable, "-m", "finr1_core.training.ray_launch", "--num-workers", str(num_workers), "--storage", storage]
    if address:
        cmd += ["--address", address]
    if _cuda():
        cmd.append("--use-gpu")
    return cmd + ["--", method, *args]


def _stream(cmd: list[str], env: dict, on_line: Callable[[str], None]) -> tuple[int, str | None]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1,
                            start_new_session=True, cwd=str(REPO_ROOT))
    last_error, last = None, None
    try:
        for line in proc.stdout:
            line = line.rstrip("\n").split("\r")[-1]  # progress-bar redraws: keep the last state
            on_line(line)
            if line.strip():
                last = line.strip()
                if _ERROR_LINE.search(line) and not _LAUNCHER_NOISE.search(line):
                    last_error = line.strip()
        rc = proc.wait()
    except BaseException:  # the caller was cancelled: stop the whole job, not just the launcher
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        raise
    return rc, last_error or last


def job_env() -> dict:
    env = repo_env(PYTHONUNBUFFERED="1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def vllm_server_command(model: str, port: int) -> list[str]:
    """TRL's vLLM server for GRPO's server mode. TRL 1.16's ``trl.cli`` is a package without
    ``__main__`` (``python -m trl.cli`` fails); ``trl.scripts.vllm_serve`` is the module behind the
    ``trl vllm-serve`` command: it runs ``vllm serve`` with TRL's weight-transfer (NCCL) settings."""
    return [sys.executable, "-m", "trl.scripts.vllm_serve", "--model", model, "--port", str(port)]


def start_vllm_server(model: str, port: int, on_line: Callable[[str], None], gpu: str | None, log_dir: str | None = None,
                      timeout_s: float = 240.0) -> subprocess.Popen:
    """TRL's vLLM server for GRPO's server mode, on its own GPU, healthy before training starts; the
    caller stops it (its process group). Its output goes to ``<log_dir>/vllm-server.log`` (the run's
    folder; a temporary file without one). A server that exits or is not healthy in ``timeout_s``
    raises :class:`TrainingFailed` with its last log line."""
    import tempfile
    import time
    from pathlib import Path

    import httpx

    env = job_env()
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        log_path = str(Path(log_dir) / "vllm-server.log")
    else:
        log_path = tempfile.mktemp(prefix="finr1-trl-vllm-", suffix=".log")
    cmd = vllm_server_command(model, port)
    on_line(f"finr1-train starting {' '.join(cmd)} (log {log_path})")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(REPO_ROOT))
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise TrainingFailed(f"vLLM server for GRPO exited with code {proc.returncode}: {_last_line(log_path)} (log: {log_path})")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                on_line(f"finr1-train vLLM server healthy on port {port}")
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGTERM)
            raise TrainingFailed(f"vLLM server for GRPO not healthy after {timeout_s:.0f} s: {_last_line(log_path)} (log: {log_path})")
        time.sleep(1)


def _last_line(path: str) -> str:
    """The log's last error line (a traceback ends with it), else its last line."""
    try:
        lines = [x.strip() for x in open(path, errors="replace").read().splitlines() if x.strip()]
    except OSError:
        return "no log"
    errors = [x for x in lines if _ERROR_LINE.search(x) and not _LAUNCHER_NOISE.search(x)]
    return (errors or lines or ["empty log"])[-1][:300]


def _wants_vllm_server(method: str, raw: dict, overrides: dict, cuda: bool | None = None) -> bool:
    """Whether GRPO really generates on a TRL vLLM server: the recipe as the job will run it
    (:func:`finr1_core.training.device.adapt_to_device`, which turns ``use_vllm`` off without a GPU
    or without vLLM in this environment) asks for ``vllm_mode: server``."""
    from finr1_core.training.device import adapt_to_device

    if method != "grpo":
        return False
    merged = {**raw, **overrides}
    merged["use_vllm"] = str(merged.get("use_vllm", False)).lower() in ("true", "1")
    adapt_to_device(merged, method, _cuda() if cuda is None else cuda)
    return bool(merged["use_vllm"]) and merged.get("vllm_mode", "colocate") == "server"


def train(method: str, recipe: str, data_uri: str | None, output_uri: str, num_processes: int | None = None,
          launcher: str = "accelerate", overrides: dict | None = None, on_line: Callable[[str], None] = print,
          accelerate_config: str | None = None, ray_address: str | None = None) -> dict:
    """Run one training job to the end; returns its result (steps, final loss, reward-variance
    stats, checkpoint and plot paths). Raises TrainingFailed with the trainer's last error line."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    load_recipe(method, recipe, overrides, output_dir=str(checkpoints.local_dir(output_uri)))  # fail fast, one line
    if launcher not in LAUNCHERS:
        raise RecipeError(f"recipe error: launcher: {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if launcher == "ray" and accelerate_config:
        raise RecipeError("recipe error: launcher: ray takes no accelerate config (DeepSpeed runs under accelerate launch)")
    check_accelerate_config(accelerate_config)
    args = ["--recipe", str(recipe), "--output", output_uri]
    if data_uri:
        args += ["--data", data_uri]
    for k, v in overrides.items():
        args += ["--set", f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"]
    server = None
    if _wants_vllm_server(method, read_yaml(recipe), overrides):
        import torch

        n = torch.cuda.device_count()
        port = int(overrides.get("vllm_server_port", read_yaml(recipe).get("vllm_server_port", 8000)))
        model = overrides.get("model_name_or_path") or read_yaml(recipe)["model_name_or_path"]
        server = start_vllm_server(model, port, on_line, gpu=str(n - 1) if n > 1 else None,
                                   log_dir=str(checkpoints.local_dir(output_uri)))
    try:
        if launcher == "ray":
            cmd = ray_command(method, args, num_processes or 1, str(checkpoints.local_dir(output_uri) / "ray"), resolve_ray_address(ray_address))
        else:
            cmd = accelerate_command(method, args, num_processes, accelerate_config)
        rc, last = _stream(cmd, job_env(), on_line)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
    if rc != 0:
        raise TrainingFailed(f"{method} training failed (exit {rc}): {last}")
    return read_result(output_uri)


def read_result(output_uri: str) -> dict:
    local = checkpoints.local_dir(output_uri)
    res = json.loads((local / RESULT_FILE).read_text())
    last = checkpoints.last_checkpoint(local)
    res.update(output_uri=output_uri, checkpoint=str(last) if last else None,
               tensorboard=str(local / "runs") if (local / "runs").exists() else None)
    return res


def train_cli(method: str, recipe: str, data_uri: str | None, output_uri: str, num_processes: int | None, launcher: str,
              set_items: list[str], on_line: Callable[[str], None] = print, accelerate_config: str | None = None) -> dict:
    """``finr1 train``: the same :func:`train` with ``--set key=value`` items and ``--accelerate-config``."""
    return train(method, recipe, data_uri, output_uri, num_processes, launcher, parse_set(set_items), on_line,
                 accelerate_config=accelerate_config)
