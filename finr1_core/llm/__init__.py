"""OpenAI-compatible LLM client used for the teacher, the judges and evaluation.

- :mod:`.client`: :class:`LLMClient` (endpoints, one request with its attempts), :class:`Endpoint`,
  :class:`Sampling`, :class:`Completion`;
- :mod:`.policy`: :class:`CallPolicy` (which failures are retried, the backoff, the circuit
  breaker), :class:`LLMError`;
- :mod:`.render`: the chat template rendered locally, the message list of the chat modes;
- :mod:`.limits`: token buckets, per-endpoint state, limits split across workers;
- :mod:`.spec`: :class:`ClientSpec`, the one serialisable way to describe and build a client.
"""
from .client import (
    KEY_HEADER,
    MODES,
    Completion,
    Endpoint,
    LLMClient,
    Sampling,
    api_key_from_env,
    default_key_var,
    endpoints_from_role,
    key_env_var,
)
from .limits import EndpointState, TokenBucket, per_worker
from .policy import RETRYABLE_STATUS, CallPolicy, LLMError
from .render import ChatRenderer, chat_messages, get_renderer
from .spec import ClientSpec, EndpointSpec

__all__ = [
    "KEY_HEADER",
    "MODES",
    "RETRYABLE_STATUS",
    "CallPolicy",
    "ChatRenderer",
    "ClientSpec",
    "Completion",
    "Endpoint",
    "EndpointSpec",
    "EndpointState",
    "LLMClient",
    "LLMError",
    "Sampling",
    "TokenBucket",
    "api_key_from_env",
    "chat_messages",
    "default_key_var",
    "endpoints_from_role",
    "get_renderer",
    "key_env_var",
    "per_worker",
]
