"""What SFT and GRPO share: resume, progress lines, checkpoint sync, the final save and result."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finr1_core.training import checkpoints, tracking

RESULT_FILE = "train_result.json"
ROWS_DIR = "rows_seen"


@dataclass
class TrainResult:
    method: str
    output_dir: str
    steps: int
    train_loss: float | None
    rows: int
    seconds: float
    resumed_from_step: int = 0
    steps_this_attempt: int = 0
    log_history: list = field(default_factory=list)
    reward: dict = field(default_factory=dict)
    plot: str | None = None
    adapted: list = field(default_factory=list)
    engine: dict = field(default_factory=dict)
    peak_memory_gib: float | None = None
    step_seconds: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def engine_summary(accelerator, model) -> dict:
    """What really runs the job, read from the prepared trainer: the accelerate set-up, the DeepSpeed
    ZeRO stage and, under ZeRO-3, how many parameters this rank holds (a partitioned model holds a
    shard), and the CPU threads of this process. Printed as the job's ``engine`` line, so that a run
    proves which engine it used."""
    import torch

    st = accelerator.state
    info = {"distributed_type": getattr(st.distributed_type, "value", str(st.distributed_type)),
            "processes": accelerator.num_processes, "mixed_precision": str(st.mixed_precision), "device": str(accelerator.device),
            "cpu_threads": torch.get_num_threads()}
    plugin = getattr(st, "deepspeed_plugin", None)
    if plugin is not None:
        info["zero_stage"] = plugin.zero_stage
        params = list(model.parameters()) if model is not None else []
        ds = [p for p in params if hasattr(p, "ds_numel")]
        if ds:  # ZeRO-3: every parameter is a placeholder plus this rank's partition
            info["params_total"] = sum(p.ds_numel for p in ds)
            info["params_on_this_rank"] = sum(p.ds_tensor.numel() for p in ds)
        else:
            info["params_total"] = info["params_on_this_rank"] = sum(p.numel() for p in params)
    return info


def peak_memory_gib() -> float | None:
    """Peak GPU memory allocated by this process (None on a CPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def make_callback(remote_uri: str | None):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One line per logged step; a new checkpoint is pushed to a remote output at once."""

        def __init__(self):
            self.first_step = None
            self.steps = 0
            self.engine: dict = {}
            self.accelerator = None
            self.step_seconds: list[float] = []
            self._t = None

        def on_train_begin(self, args, state, control, **kw):
            self.first_step = state.global_step
            if self.accelerator is not None:  # the model is prepared (wrapped, partitioned) by now
                self.engine = engine_summary(self.accelerator, kw.get("model"))
                if state.is_world_process_zero:
                    print(tracking.progress_line("engine", **self.engine), flush=True)

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.steps += 1
            if self._t is not None:  # wall seconds of each optimizer step (generation included for GRPO)
                self.step_seconds.append(round(time.perf_counter() - self._t, 4))

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs:
                # own line: a progress bar may have left the cursor mid-line
                print("\n" + tracking.progress_line("log", step=state.global_step, max_steps=state.max_steps, **logs), flush=True)

        def on_save(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            ck = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if remote_uri:
                checkpoints.push(ck, remote_uri, ck.name)
            print(tracking.progress_line("checkpoint", step=state.global_step, path=str(ck)), flush=True)

    return Progress()


def time_budget_callback(minutes: float):
    """Stop the trainer at the first step boundary after ``minutes`` (the recipe's ``max_minutes``)."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        def __init__(self):
            self.t0 = None

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.monotonic()

        def on_step_end(self, args, state, control, **kw):
            if self.t0 is not None and time.monotonic() - self.t0 >= minutes * 60:
                if state.is_world_process_zero:
                    print(tracking.progress_line("time_budget", step=state.global_step, minutes=minutes), flush=True)
                control.should_training_stop = True

    return TimeBudget()


def with_row_log(trainer_cls, tokenizer):
    """A trainer subclass that writes, per rank, the decoded rows of every batch it trains on."""

    class RowLogging(trainer_cls):
        def training_step(self, model, inputs, *a, **kw):
            ids = inputs.get("input_ids", inputs.get("prompt_ids"))
            if ids is not None:
                rank = self.accelerator.process_index
                out = Path(self.args.output_dir) / ROWS_DIR / f"rank{rank}.jsonl"
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("a") as f:
                    for row in ids.tolist():
                        f.write(json.dumps({"step": self.state.global_step, "text": tokenizer.decode(row)}, ensure_ascii=False) + "\n")
            return super().training_step(model, inputs, *a, **kw)

    return RowLogging


def _finalize(trainer, tok, output_dir: Path) -> None:
    trainer.save_model(str(output_dir))
    if trainer.accelerator.is_main_process:
        tok.save_pretrained(str(output_dir))
        gen = output_dir / "generation_config.json"
        if gen.exists():  # keep sampling on, so a server honours temperature
            g = json.loads(gen.read_text())
            g["do_sample"] = True
            gen.write_text(json.dumps(g, indent=2))


def train_and_save(method: str, trainer, tok, rows: int, remote_uri: str | None, adapted: list[str]) -> TrainResult:
    """Resume from the last complete checkpoint, train, save the model, plot, write the result."""
    t0 = time.time()
    output_dir = Path(trainer.args.output_dir)
    cb = make_callback(remote_uri)
    cb.accelerator = trainer.accelerator
    trainer.add_callback(cb)
    resume = checkpoints.last_checkpoint(output_dir)
    if resume is not None:
        print(tracking.progress_line("resume", checkpoint=str(resume)), flush=True)
    out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    _finalize(trainer, tok, output_dir)
    hist = trainer.state.log_history
    res = TrainResult(method, str(output_dir), out.global_step, out.training_loss, rows, round(time.time() - t0, 2),
                      resumed_from_step=cb.first_step or 0, steps_this_attempt=cb.steps, log_history=hist,
                      reward=tracking.reward_stats(hist) if method == "grpo" else {}, adapted=adapted, engine=cb.engine,
                      peak_memory_gib=peak_memory_gib(), step_seconds=cb.step_seconds)
    if trainer.accelerator.is_main_process:
        res.plot = tracking.plot_curves(hist, output_dir / "curves.png", title=f"{method} {output_dir.name}")
        (output_dir / RESULT_FILE).write_text(json.dumps(res.to_dict(), indent=2, default=str))
        if remote_uri:
            checkpoints.push(output_dir, remote_uri)
        print(tracking.progress_line("done", **{k: v for k, v in res.to_dict().items() if k != "log_history"}), flush=True)
    return res


def clear_rows_log(output_dir: str | Path) -> None:
    shutil.rmtree(Path(output_dir) / ROWS_DIR, ignore_errors=True)
