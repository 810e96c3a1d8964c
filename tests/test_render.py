"""Local chat-template rendering for `completions` mode: no system prompt, one forced prefix."""
from __future__ import annotations

import shutil

from finr1_core.config import embedded_model_dir
from finr1_core.llm import ChatRenderer


def _tokenizer_copy(tmp_path, template: str):
    d = tmp_path / "tok"
    d.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_model_dir() / f, d / f)
    (d / "chat_template.jinja").write_text(template)
    return str(d)


def test_prefix_is_appended_once(tmp_path):
    msgs = [{"role": "user", "content": "净利率是多少？"}]
    plain = ChatRenderer(str(embedded_model_dir())).render(msgs, "<think>\n")
    assert plain == "<|im_start|>user\n净利率是多少？<|im_end|>\n<|im_start|>assistant\n<think>\n"
    # a template that opens the think block itself (as DeepSeek-R1's does) gets no second one
    r1_like = _tokenizer_copy(tmp_path, "{% for m in messages %}<|User|>{{ m['content'] }}{% endfor %}"
                                        "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}")
    out = ChatRenderer(r1_like).render(msgs, "<think>\n")
    assert out == "<|User|>净利率是多少？<|Assistant|><think>\n"
    assert out.count("<think>") == 1


def test_default_system_turn_is_removed(tmp_path):
    stock = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
             "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
             "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    r = ChatRenderer(_tokenizer_copy(tmp_path, stock))
    out = r.render([{"role": "user", "content": "q"}], "<think>\n")
    assert "system" not in out and out.endswith("<|im_start|>assistant\n<think>\n")
    # an explicit system message is the caller's choice and is kept
    kept = r.render([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}])
    assert kept.startswith("<|im_start|>system\nS<|im_end|>")
