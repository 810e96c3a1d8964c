"""vLLM reasoning parser ``finr1_think``: DeepSeek-R1's semantics for a model without think tokens.

vLLM's ``deepseek_r1`` parser needs ``<think>`` and ``</think>`` as single tokens of the vocabulary
and refuses to start otherwise ("could not locate think start/end tokens"); SmolLM2 (the embedded
model) spells them with ordinary tokens. This parser works on the text (as vLLM's ``olmo3`` parser
does, whose streaming it reuses) with DeepSeek-R1's rule for the forced ``<think>\\n`` prefix: the
output is reasoning up to the first ``</think>`` and the answer after it; an output that never
closes the block is all reasoning (``content`` null). finr1 loads it with
``--reasoning-parser-plugin infra/vllm/think_parser.py --reasoning-parser finr1_think`` (see
``finr1_core/serving.py``); this file runs inside vLLM's own environment, never in finr1's.
"""
from vllm.reasoning import ReasoningParserManager
from vllm.reasoning.olmo3_reasoning_parser import Olmo3ReasoningParser

START, END = "<think>", "</think>"


@ReasoningParserManager.register_module("finr1_think")
class Finr1ThinkParser(Olmo3ReasoningParser):
    def extract_reasoning(self, model_output, request):
        text = model_output[len(START):] if model_output.startswith(START) else model_output
        i = text.find(END)
        if i < 0:
            return text or None, None
        return text[:i] or None, text[i + len(END):] or None
