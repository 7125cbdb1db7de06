"""The LLM learner: `learn` with skill discovery by any litellm model (hosted, or a local OpenAI-compatible
server through ``api_base``). This module owns the network call; handbook/learning/llm_discovery.py owns the
prompts, validation, retries and the taxonomy, and never touches the network.

Why a synchronous litellm call: the learning pipeline is CPU-bound, synchronous code that runs in a worker
thread (the MCP job) or the CLI's main thread; the discoverer calls `complete` between its numpy steps.
Settings are validated as an `LlmAgentConnection` (same URL, key-variable and price rules as agents.toml).
Cost: the learner's configured prices, else litellm's table, else unknown (None, reported as null).
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from skillorchestra.handbook.errors import InvalidInput, first_problem
from skillorchestra.handbook.learning.llm_discovery import (
    Complete,
    Completion,
    LlmDiscoverer,
    LlmDiscoveryParams,
    with_llm_texts,
)
from skillorchestra.handbook.learning.pipeline import LearnResult, learn
from skillorchestra.handbook.models import DESCRIPTION_MAX
from skillorchestra.handbook.traces import AgentPrice, TraceTask
from skillorchestra.server.agent_config import LlmAgentConnection, masked_env_name_error
from skillorchestra.server.llm_backend import (
    PLACEHOLDER_API_KEY,
    backend_env_defaults,
    call_price,
    classify_exception,
    usage_believed,
)
from skillorchestra.server.masking import remember_keys, scrub, secrets_to_mask

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 180.0
DEFAULT_MAX_OUTPUT_TOKENS = 4096
RATE_LIMIT_PAUSE_S = 2.0
_MESSAGE_LIMIT = 600


def learner_connection(
    model: str,
    api_base: str | None = None,
    api_key_env: str | None = None,
    *,
    input_per_mtok: float | None = None,
    output_per_mtok: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
) -> LlmAgentConnection:
    """The learner's settings, validated like an agent's; errors name the --learner* argument."""
    try:
        return LlmAgentConnection(
            id="learner",
            model=model,
            api_base=api_base,
            api_key_env=api_key_env,
            input_per_mtok=input_per_mtok,
            output_per_mtok=output_per_mtok,
            timeout_s=timeout_s,
            max_output_tokens=max_output_tokens,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        field, value, expected = first_problem(exc)
        field = field.split(".")[0]
        where = "--learner" + ("-" + field.replace("_", "-") if field else "")
        if field == "api_key_env":
            value, expected = masked_env_name_error(err, expected)
        raise InvalidInput(where, value, expected) from None


def require_api_key(conn: LlmAgentConnection) -> None:
    """Fail before the first call when the named key variable is unset: otherwise every discovery batch would
    fail on auth in turn (dozens of calls and retries) before the run gives up."""
    if conn.api_key_env and not os.environ.get(conn.api_key_env):
        raise InvalidInput(
            "--learner-api-key-env",
            conn.api_key_env,
            "the name of a set environment variable (it is unset or empty here: export it, or leave the flag out "
            "for a server that needs no key)",
        )


def _litellm() -> ModuleType:
    backend_env_defaults()
    module: Any = importlib.import_module("litellm")
    module.suppress_debug_info = True  # its banners go to stdout
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return module


def _cost(conn: LlmAgentConnection, litellm: ModuleType, prompt: int | None, completion: int | None) -> float | None:
    return None if prompt is None or completion is None else call_price(conn, litellm, prompt, completion)[0]


def make_complete(conn: LlmAgentConnection, *, temperature: float = 0.0, json_mode: bool = False) -> Complete:
    """A `complete(messages) -> Completion` over litellm: one request, no hidden retries, the key never shown."""
    litellm = _litellm()
    key = os.environ.get(conn.api_key_env) if conn.api_key_env else None
    remember_keys([key])
    secrets = secrets_to_mask([key])  # its key and the environment's, as the backends mask them
    extra: dict[str, Any] = {"response_format": {"type": "json_object"}} if json_mode else {}

    def complete(messages: list[dict[str, str]]) -> Completion:
        try:
            response = litellm.completion(
                model=conn.model,
                api_base=conn.api_base,
                api_key=key or PLACEHOLDER_API_KEY,
                messages=messages,
                timeout=conn.timeout_s,
                max_tokens=conn.max_output_tokens,
                temperature=temperature,
                max_retries=0,
                drop_params=True,  # models that refuse temperature (or json mode) get the request without it
                **extra,
            )
        except Exception as exc:
            error_class = classify_exception(exc, litellm)
            message = scrub(str(exc) or type(exc).__name__, secrets)[:_MESSAGE_LIMIT]
            if error_class == "auth" and conn.api_key_env and not key:
                message += f" (environment variable {conn.api_key_env} is not set)"
            log.warning("learner %s failed (%s): %s", conn.model, error_class, message)
            if error_class == "rate_limit":
                time.sleep(RATE_LIMIT_PAUSE_S)
            return Completion(None, cost_usd=0.0, error_class=error_class, message=message)
        text = (response.choices[0].message.content or "") if response.choices else ""
        usage = getattr(response, "usage", None)
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        if not usage_believed(prompt, completion):  # as delegate's calls: never priced (review)
            log.warning(
                "learner %s reported %s prompt and %s completion tokens: not believed", conn.model, prompt, completion
            )
            prompt = completion = None  # the call's cost is then unknown
        return Completion(scrub(text, secrets), prompt, completion, _cost(conn, litellm, prompt, completion))

    return complete


def learn_with_llm(
    tasks: Sequence[TraceTask],
    prices: Mapping[str, AgentPrice],
    model: str,
    api_base: str | None = None,
    api_key_env: str | None = None,
    *,
    input_per_mtok: float | None = None,
    output_per_mtok: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
    json_mode: bool = False,
    discovery: LlmDiscoveryParams | None = None,
    complete: Complete | None = None,
    **learn_kwargs: Any,
) -> LearnResult:
    """`learn(tasks, prices, **learn_kwargs)` with the taxonomy discovered by the learner model.

    `learn_kwargs` are learn's (val_fraction, lambda_, seed, embedder, progress, params). The result carries
    llm_calls and usd (the known part; metrics["usd"] is None when a price was unknown) and
    metrics["learner"] (calls, tokens, retries, agreement of the labeller with the LLM's labels).
    Raises LearnerFailed (a HandbookError) when the model gives no usable taxonomy.
    """
    conn = learner_connection(
        model,
        api_base,
        api_key_env,
        input_per_mtok=input_per_mtok,
        output_per_mtok=output_per_mtok,
        timeout_s=timeout_s,
        max_output_tokens=max_output_tokens,
    )
    if complete is None:
        require_api_key(conn)
        complete = make_complete(conn, json_mode=json_mode)
    descriptions = {a: p.description or "" for a, p in prices.items()}
    discoverer = LlmDiscoverer(complete, discovery, descriptions)
    result = learn(tasks, prices, discoverer=discoverer, **learn_kwargs)
    return finish(result, discoverer, conn)


def finish(result: LearnResult, discoverer: LlmDiscoverer, conn: LlmAgentConnection) -> LearnResult:
    """The LLM's wording on the skills, the learner's accounting in the metrics and the description."""
    learner = discoverer.metrics(result.labeller)
    stats = discoverer.stats
    document = with_llm_texts(result.document, discoverer.texts())
    usd = "unknown cost" if stats.usd is None else f"${stats.usd:.4g}"
    what = (
        f"Learned with the LLM learner {conn.model} ({stats.calls} calls, {usd}, {stats.tasks_labelled} tasks labelled)"
    )
    marker = "Learned offline (no LLM)"
    if marker in document.description:
        description = document.description.replace(marker, what, 1)
    else:
        description = f"{what}. {document.description}"
    result.document = document.model_copy(update={"description": description[:DESCRIPTION_MAX]})
    result.llm_calls = stats.calls
    result.usd = stats.usd_known
    result.metrics.update(
        {
            "llm_calls": stats.calls,
            "usd": stats.usd,
            "tokens": {"prompt": stats.prompt_tokens, "completion": stats.completion_tokens},
            "learner": {"model": conn.model, "api_base": conn.api_base, **learner},
            "label_agreement_llm": learner["label_agreement_llm_heldout"],
        }
    )
    return result
