"""Ray Train launcher: the training entry point on N workers of a Ray cluster, as its own job.

    python -m finr1_core.training.ray_launch --num-workers N [--use-gpu] [--address ADDR] -- sft|grpo --recipe ...

Ray Train's ``TorchTrainer`` starts one worker per rank (``ScalingConfig(num_workers=N,
use_gpu=...)``), sets up the process group (NCCL on GPUs, gloo on CPUs) and the usual
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables, so each worker runs the same
``python -m finr1_core.training`` code that ``accelerate launch`` runs. ``--address`` (or
``RAY_ADDRESS``) joins the cluster that ran distillation; without it a local Ray starts. Worker
output reaches this driver's stdout, which :func:`finr1_core.training.launch.train` streams; a
failure ends with one ``finr1-train error:`` line.
"""
from __future__ import annotations

import argparse
import os
import sys


def worker_loop(config: dict) -> None:
    """One rank: the training entry point with this run's arguments (process group already up)."""
    from finr1_core.training.__main__ import main

    os.environ.update(config.get("env") or {})
    rc = main(list(config["argv"]))
    if rc != 0:
        raise RuntimeError(f"finr1-train exited with status {rc} on rank {os.environ.get('RANK', '?')}")


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    errs = [ln for ln in lines if "finr1-train error:" in ln or "Error:" in ln]
    return (errs or lines or ["unknown error"])[-1]


def fit(argv: list[str], num_workers: int, use_gpu: bool, address: str | None, storage: str) -> int:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    env = {k: os.environ[k] for k in ("PYTHONPATH", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "PYTHONUNBUFFERED") if k in os.environ}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:  # a local Ray: logical CPUs for every worker even on a small host
        ray.init(num_cpus=max(num_workers + 1, os.cpu_count() or 1), include_dashboard=False, log_to_driver=True)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"argv": argv, "env": env},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=None if use_gpu else {"CPU": 1}),
        run_config=RunConfig(name="finr1-train", storage_path=os.path.abspath(storage)),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # TrainingFailedError carries the worker's traceback
        print(f"finr1-train error: {last_line(e)}", flush=True)
        return 1
    finally:
        ray.shutdown()
    if result.error is not None:
        print(f"finr1-train error: {last_line(result.error)}", flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("finr1-train error: ray_launch: expected '-- sft|grpo --recipe ...' after the launcher options", flush=True)
        return 2
    cut = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m finr1_core.training.ray_launch")
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--use-gpu", action="store_true")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))
    ap.add_argument("--storage", required=True, help="Ray Train's run folder (local)")
    a = ap.parse_args(argv[:cut])
    return fit(argv[cut + 1:], a.num_workers, a.use_gpu, a.address, a.storage)


if __name__ == "__main__":
    sys.exit(main())
