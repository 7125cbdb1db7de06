"""Call an LLM agent through litellm: one HTTP request, true cost, classified errors, no key in any output.

Why this shape:
* litellm costs ~4 s to import, so it is imported on the first call (or by ``ensure_litellm()`` in the
  background), in a worker thread, never on the event loop and never at server start.
* ``max_retries=0``: the openai SDK would otherwise retry twice on its own; the router owns retries/fallbacks.
* Prices: the agent's own prices win (the delegator puts the live handbook agent's prices on the connection,
  the ones routing uses); else litellm's bundled table; else the cost is unknown (None), never 0. Per-call price
  kwargs are never passed to litellm because they silently register the price globally.
* Usage: litellm fills a missing ``usage`` with zeros, so a non-empty request that reports 0 prompt tokens has no
  usage report. Its tokens are then estimated as routing estimates them (characters / 4, handbook/costing.py) and
  priced, with ``cost_source="estimated"`` and a warning: an unknown usage is never billed $0.
* A completion with no choices is a ``server_error`` (the next candidate is tried; competence is untouched).
* Errors map to the contract's classes. litellm reports a dropped or refused connection as
  ``InternalServerError`` (500) with ``openai.APIConnectionError``/``httpx`` errors in its cause chain, so the
  chain is inspected before the status code. Request errors (``BadRequestError`` and its subclasses
  ``ContextWindowExceededError``, ``ContentPolicyViolationError``, also ``UnprocessableEntityError``) are
  ``task``: the agent could not do this step, which says something about the agent and the step, not about
  the infrastructure. ``NotFoundError`` (unknown model or route at ``api_base``) is a configuration fault and
  counts as ``server_error``; so does any unrecognised exception, so that it never touches competence.
* Keys: providers echo the key they got (``Incorrect API key provided: sk-...``). Each call masks the agent's key,
  the keys litellm would look up itself when the agent names none (``litellm_keys``), and the environment's
  secrets (server/masking.py) in its answer, its error message and its log line.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from types import ModuleType
from typing import Any, Literal, NamedTuple

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar
from pydantic import BaseModel, Field

from skillorchestra.handbook.costing import prompt_tokens as estimated_tokens
from skillorchestra.handbook.models import INFRASTRUCTURE_ERRORS, PLAUSIBLE_TOKENS, ErrorClass
from skillorchestra.server.agent_config import LlmAgentConnection
from skillorchestra.server.masking import remember_keys, scrub, secrets_to_mask

log = logging.getLogger(__name__)

# "estimated": the backend reported no token usage, so the price was applied to characters / 4
CostSource = Literal["agent_prices", "litellm_table", "estimated", "unknown", "no_token_cost"]

# Sent when an agent has no key: local OpenAI-compatible servers accept any key but want a non-empty one.
PLACEHOLDER_API_KEY = "sk-no-key"
_MESSAGE_LIMIT = 600
_TIMEOUT_GRACE_S = 0.5  # the outer deadline lets litellm's own, more informative Timeout fire first

_litellm: ModuleType | None = None
_import_lock = threading.Lock()


class BackendResult(BaseModel):
    """What one call to one agent produced; the same shape for LLM and MCP agents."""

    answer: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None  # None = unknown, never a silent 0
    cost_source: CostSource = "unknown"
    latency_s: float = 0.0
    error_class: ErrorClass | None = None  # None on success
    error_type: str | None = None  # the exception's class name, for logs and the `tried` list
    message: str | None = None
    warnings: list[str] = Field(default_factory=list)  # for the delegate result: estimated cost, lowered max_tokens

    @property
    def ok(self) -> bool:
        return self.error_class is None

    def unknown_cost_reason(self) -> str:
        """Why ``cost_usd`` is None, for a warning: the wording must match what happened to this call."""
        if self.error_class == "timeout":
            return "the call timed out, and the provider may have generated (and billed) an answer nobody waited for"
        if self.error_class is not None:
            return "the call failed after the backend began answering"
        return "no price in the handbook (upsert_agent), agents.toml or litellm's table"

    @property
    def infrastructure_failure(self) -> bool:
        """True when the failure says nothing about the agent's competence (fallback, breaker)."""
        return self.error_class in INFRASTRUCTURE_ERRORS


def backend_env_defaults() -> dict[str, str]:
    """Set (setdefault) and return the variables that keep litellm offline and quick (also for children)."""
    defaults = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "LITELLM_LOG": "ERROR"}
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in defaults}


def _import_litellm() -> ModuleType:
    """Runs in a worker thread; the lock makes concurrent first calls import and configure once."""
    global _litellm
    with _import_lock:
        if _litellm is None:
            backend_env_defaults()
            # litellm's own handler writes records below WARNING to stdout (the stdio transport's channel) and
            # skips our one-line formatter; with LITELLM_LOG=DEBUG and --log-level DEBUG its import alone wrote
            # four records there. Quiet before the import; after it, its records go to the root handler instead.
            litellm_logs = [logging.getLogger(name) for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")]
            for litellm_log in litellm_logs:
                litellm_log.setLevel(logging.CRITICAL)
            module: Any = importlib.import_module("litellm")
            module.suppress_debug_info = True  # its banners go to stdout, which is the MCP stdio channel
            secret_filter = getattr(getattr(module, "_logging", None), "_secret_filter", None)  # was on its handler
            for litellm_log in litellm_logs:
                litellm_log.handlers.clear()
                litellm_log.propagate = True
                if secret_filter is not None:
                    litellm_log.addFilter(secret_filter)
            try:  # its first provider lookup imports more (~6 ms): here, off the event loop, not in a call's masking
                module.get_llm_provider(model="openai/gpt-4o-mini")
            except Exception:
                log.debug("warming litellm's provider lookup failed", exc_info=True)
            _litellm = module
        return _litellm


async def ensure_litellm() -> ModuleType:
    """The litellm module, imported off the event loop on first use, and its first call's set-up done (call it
    before a call's time budget starts). Calls arriving while another warms up wait for it: QA, four concurrent
    first delegations with timeout_s=0.5 saw three time out, their clocks started inside the warm-up."""
    global _first_call_warmed, _warming
    module = _litellm if _litellm is not None else await anyio.to_thread.run_sync(_import_litellm)
    if _first_call_warmed:
        return module
    if _warming is not None:
        warming = _warming
        while not warming.is_set():  # polled: the warm-up may run on another event loop (a thread's: review)
            await anyio.sleep(0.01)
        return module
    _warming = warming = threading.Event()
    try:
        await _warm_first_call(module)
    finally:  # cancelled too: the waiters go on, and their own first call pays the set-up
        _first_call_warmed = True
        warming.set()
        _warming = None
    return module


_first_call_warmed = False
_warming: threading.Event | None = None  # set while the first call's set-up runs
WARM_UP_BASE = "http://127.0.0.1:9/v1"  # the discard port: nothing listens, so the connection is refused at once


async def _warm_first_call(module: ModuleType) -> None:
    """A process's first acompletion builds its HTTP client stack: 0.6-0.7 s here, against 15 ms after. A call to a
    closed loopback port does that work and is refused at once, so a first delegated step's time budget is the
    agent's (QA: timeout_s=1 failed the first call to a backend answering in 10 ms, and fed the breaker)."""
    if _proxied(WARM_UP_BASE):  # the warm-up would go to the proxy (review): the first call pays its set-up then
        return
    started = time.perf_counter()
    try:
        with anyio.fail_after(5):
            await module.acompletion(
                model="openai/warm-up",
                messages=[{"role": "user", "content": "."}],
                api_base=WARM_UP_BASE,
                api_key="warm-up",
                max_retries=0,
                timeout=2,
            )
    except Exception:  # refused, as intended (or anything else: a warm-up never fails a step)
        pass
    log.debug("litellm's first call set up in %.2f s", time.perf_counter() - started)


def litellm_keys(conn: LlmAgentConnection, litellm: ModuleType) -> list[str]:
    """The keys litellm itself would send for this agent when it is given none: the provider's dynamic key, the
    provider's standard variable (e.g. OPENAI_API_KEY, via its model-info class) and litellm's module-level keys
    (``litellm.api_key``, ``litellm.openai_key``, ...). Tens of microseconds; a failed lookup finds nothing."""
    found: list[object] = []  # what each source holds; only strings are keys
    try:
        model, provider, dynamic_key, _ = litellm.get_llm_provider(model=conn.model, api_base=conn.api_base)
        found.append(dynamic_key)
        info = litellm.utils.ProviderConfigManager.get_provider_model_info(
            model=model, provider=litellm.LlmProviders(provider)
        )
        if info is not None:
            found.append(info.get_api_key())
    except Exception:  # an unknown provider or model: the environment net still applies
        log.debug("no provider key lookup for %s", conn.model, exc_info=True)
    found.extend(getattr(litellm, name, None) for name in _module_key_names(litellm))
    return [k for k in found if isinstance(k, str)]


_key_names: tuple[str, ...] | None = None


def _module_key_names(litellm: ModuleType) -> tuple[str, ...]:
    """litellm's module-level key settings (api_key, openai_key, anthropic_key, ...), listed once: scanning its
    ~1600 module attributes per call would cost most of a millisecond."""
    global _key_names
    if _key_names is None:
        _key_names = tuple(name for name in vars(litellm) if name.endswith("_key"))
    return _key_names


def call_secrets(conn: LlmAgentConnection, key: str | None, litellm: ModuleType) -> tuple[str, ...]:
    """Everything to mask in one call's answer, error and log line: the agent's key, the keys litellm would look up
    itself, and the environment's secrets (server/masking.py). Computed once per call."""
    keys = [key if key != PLACEHOLDER_API_KEY else None, *litellm_keys(conn, litellm)]
    remember_keys(keys)
    return secrets_to_mask(keys)


# what the OpenAI client (wrapped by litellm as an InternalServerError) says when it finds no key to send
_MISSING_KEY = re.compile(r"missing credentials|api_key client option must be set", re.IGNORECASE)


def _api_key(conn: LlmAgentConnection) -> str | None:
    return os.environ.get(conn.api_key_env) if conn.api_key_env else None


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 12:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _transport_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(timeout, connection) exception classes of the HTTP stacks litellm uses (already imported by it)."""
    timeouts: list[type] = [TimeoutError]
    connections: list[type] = [ConnectionError]
    if (openai := sys.modules.get("openai")) is not None:
        timeouts.append(openai.APITimeoutError)
        connections.append(openai.APIConnectionError)
    if (httpx := sys.modules.get("httpx")) is not None:
        timeouts.append(httpx.TimeoutException)
        connections.append(httpx.TransportError)
    if (aiohttp := sys.modules.get("aiohttp")) is not None:
        timeouts.append(aiohttp.ServerTimeoutError)
        connections.append(aiohttp.ClientConnectionError)
    return tuple(timeouts), tuple(connections)


def classify_exception(exc: BaseException, litellm: ModuleType | None = None) -> ErrorClass:
    """Map a litellm/openai/httpx exception to the contract's error classes (see the module docstring)."""
    lm = litellm or _litellm
    if lm is not None:
        if isinstance(exc, lm.Timeout):
            return "timeout"
        if isinstance(exc, lm.RateLimitError):
            return "rate_limit"
        if isinstance(exc, lm.AuthenticationError | lm.PermissionDeniedError):
            return "auth"
    timeouts, connections = _transport_classes()
    chain = _cause_chain(exc)
    if any(isinstance(e, timeouts) for e in chain):
        return "timeout"
    if any(isinstance(e, connections) for e in chain):
        return "connection"
    if lm is not None:
        if isinstance(exc, lm.NotFoundError):
            return "server_error"
        if isinstance(exc, lm.BadRequestError | lm.UnprocessableEntityError):
            return "task"
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        if status == 408:
            return "timeout"
        if status == 429:
            return "rate_limit"
        if status in (401, 403):
            return "auth"
        if 400 <= status < 500 and status != 404:
            return "task"
    if any(_MISSING_KEY.search(str(e)) for e in chain):  # the client refused to send a request without a key
        return "auth"
    return "server_error"


def table_prices(model: str) -> tuple[float, float] | None:
    """USD per million input and output tokens of `model` in litellm's bundled price table (the one the server
    reads: LITELLM_LOCAL_MODEL_COST_MAP), or None when it does not list the model, with or without its provider
    prefix: `agents load` gives these to an agent its file does not price, so routing and budgets count the cost
    delegate will bill. Read as JSON (30 ms): importing litellm for it took 4 s a load."""
    table = _bundled_price_table()
    names = [model, model.split("/", 1)[1]] if "/" in model else [model]
    for name in names:
        entry = table.get(name)
        if not isinstance(entry, dict):
            continue
        prices = (entry.get("input_cost_per_token"), entry.get("output_cost_per_token"))
        if all(isinstance(p, int | float) and math.isfinite(p) and p >= 0 for p in prices) and any(prices):
            return float(prices[0]) * 1e6, float(prices[1]) * 1e6  # type: ignore[arg-type]
    return None


@functools.cache
def _bundled_price_table() -> dict[str, Any]:
    """litellm's model_prices_and_context_window_backup.json, found without importing litellm ({} if absent);
    read once a process (agents load looks up every unpriced agent)."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return {}
    path = os.path.join(os.path.dirname(spec.origin), "model_prices_and_context_window_backup.json")
    try:
        with open(path, encoding="utf-8") as handle:
            table = json.load(handle)
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def _proxied(url: str) -> bool:
    """Whether the environment sends requests for `url` through a proxy (HTTP_PROXY and friends, less NO_PROXY)."""
    import urllib.request
    from urllib.parse import urlsplit

    scheme, host = urlsplit(url).scheme, urlsplit(url).hostname or ""
    return scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)


def call_price(
    conn: LlmAgentConnection, litellm: ModuleType, prompt: int, completion: int
) -> tuple[float | None, CostSource]:
    """What these tokens cost: the agent's own prices, else litellm's table, else unknown (never 0)."""
    if conn.has_prices:
        return conn.token_cost(prompt, completion), "agent_prices"
    try:
        p_usd, c_usd = litellm.cost_per_token(model=conn.model, prompt_tokens=prompt, completion_tokens=completion)
    except Exception:  # ModelNotMappedError and friends: the table does not know this model
        return None, "unknown"
    return float(p_usd) + float(c_usd), "litellm_table"


def _message_text(messages: Sequence[dict[str, Any]]) -> str:
    parts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # content parts: {"type": "text", "text": ...}
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "".join(parts)


def usage_reported(messages: Sequence[dict[str, Any]], prompt: int | None, completion: int | None) -> bool:
    """False when the backend sent no usage: litellm reports a missing one as zeros, and a non-empty request
    never costs 0 prompt tokens."""
    if prompt is None or completion is None:
        return False
    return prompt > 0 or not _message_text(messages)


def usage_believed(prompt: int | None, completion: int | None) -> bool:
    """False for a report no model could make: more tokens in one call than any takes or writes, or fewer than none.
    QA: a backend reporting 1e18 tokens was billed $3e12, which became every agent's reference cost and made
    lambda meaningless; the learner's calls are checked alike (server/llm_learner.py). Not bounded by the text we
    sent: an agent behind an OpenAI-compatible endpoint may add retrieved context or its own long prompt, and its
    honest usage must be billed (review)."""
    return all(n is None or 0 <= n <= PLAUSIBLE_TOKENS for n in (prompt, completion))


def estimate_tokens(messages: Sequence[dict[str, Any]], answer: str) -> tuple[int, int]:
    """(prompt, completion) tokens by routing's rule (characters / 4, handbook/costing.py), rounded up."""
    prompt, completion = estimated_tokens([_message_text(messages), answer])
    return math.ceil(prompt), math.ceil(completion)


def _call_cost(
    conn: LlmAgentConnection,
    litellm: ModuleType,
    messages: Sequence[dict[str, Any]],
    answer: str,
    prompt: int | None,
    completion: int | None,
) -> tuple[float | None, CostSource, list[str], bool]:
    """The call's cost from reported usage, else from estimated tokens (with a warning), never $0 for unknown; and
    whether the reported usage was taken (else the result shows no token counts)."""
    believed = usage_believed(prompt, completion)
    if usage_reported(messages, prompt, completion) and believed:
        cost, source = call_price(conn, litellm, prompt or 0, completion or 0)
        return cost, source, [], True
    est_prompt, est_completion = estimate_tokens(messages, answer)
    cost, source = call_price(conn, litellm, est_prompt, est_completion)
    what = (
        "reported no token usage"
        if believed
        else f"reported {_count(prompt)} prompt and {_count(completion)} completion tokens, more than any model takes"
        f" or writes in one call ({PLAUSIBLE_TOKENS:,}): not believed"
    )
    warning = f"the backend of {conn.id} {what}: " + (
        f"cost estimated from ~{est_prompt} prompt and ~{est_completion} completion tokens (characters / 4, as "
        "routing estimates them)"
        if cost is not None
        else "cost unknown"
    )
    return cost, "estimated" if cost is not None else source, [warning], False


def _count(tokens: int | None) -> str:
    return "no" if tokens is None else f"{tokens:,}"


def expected_call_cost(conn: LlmAgentConnection, messages: Sequence[dict[str, Any]], max_tokens: int) -> float | None:
    """What a call is expected to cost at most: estimated prompt tokens and ``max_tokens`` completion tokens (capped
    by the agent's max_output_tokens); None when no price is known. litellm's table is read only once imported."""
    prompt, _ = estimate_tokens(messages, "")
    completion = min(max_tokens, conn.max_output_tokens)
    if conn.has_prices:
        return conn.token_cost(prompt, completion)
    return None if _litellm is None else call_price(conn, _litellm, prompt, completion)[0]


def _usage_of(obj: Any) -> tuple[int | None, int | None]:
    usage = getattr(obj, "usage", None)
    if usage is None:
        return None, None
    return getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)


async def _stream_answer(
    response: Any, on_progress: Callable[[int], Awaitable[None]] | None
) -> tuple[str, int | None, int | None]:
    parts: list[str] = []
    prompt = completion = None
    async for chunk in response:
        if chunk.choices and (delta := chunk.choices[0].delta) is not None and delta.content:
            parts.append(delta.content)
            if on_progress is not None:
                await on_progress(sum(len(p) for p in parts))
        p, c = _usage_of(chunk)
        if p is not None:
            prompt, completion = p, c
    return "".join(parts), prompt, completion


async def call_llm(
    conn: LlmAgentConnection,
    messages: list[dict[str, Any]],
    *,
    timeout_s: float | None = None,
    max_tokens: int | None = None,
    stream: bool = False,
    on_progress: Callable[[int], Awaitable[None]] | None = None,
) -> BackendResult:
    """One call, no retry. ``timeout_s``/``max_tokens`` default to the agent's settings, capped by them.

    With ``stream=True`` the answer is streamed (usage from the final chunk) and ``on_progress`` gets the
    number of characters received so far, so a caller can send MCP progress notifications while waiting.
    Cancellation propagates (only ``Exception`` is caught).
    """
    timeout = min(timeout_s, conn.timeout_s) if timeout_s is not None else conn.timeout_s
    limit, warnings = _max_tokens_sent(conn, max_tokens)
    key = _api_key(conn)
    if conn.api_key_env and not key:  # a named key that is not there: say so without calling the provider
        return _missing_key(conn)
    litellm = await ensure_litellm()  # outside the deadline: the one-off import is not the agent's latency
    secrets = call_secrets(conn, key, litellm)
    limiter, left = await slot_within(conn.id, conn.concurrency, timeout)
    if limiter is None:
        return queue_full(conn.id, conn.concurrency, timeout)
    start = time.perf_counter()
    answering = False  # once the provider starts answering, a failure may still be billed
    try:
        with anyio.fail_after(_deadline_s(conn, timeout, left)), holding_slot(limiter):
            response = await _completion(litellm, conn, key, messages, limit, stream)
            answering = True
            reply = await _read_reply(response, stream, on_progress)
    except Exception as exc:
        latency = time.perf_counter() - start
        return _failed_llm_call(conn, exc, latency, timeout, left, secrets, answering=answering)
    latency = time.perf_counter() - start
    return _answered(conn, litellm, messages, reply, latency, secrets, warnings)


class _Reply(NamedTuple):
    """What a completed call returned: its text and the usage the backend reported (None: not reported)."""

    answer: str
    prompt_tokens: int | None
    completion_tokens: int | None
    no_choices: bool  # a 200 without an answer: the provider's fault, not the agent failing the step


def _max_tokens_sent(conn: LlmAgentConnection, max_tokens: int | None) -> tuple[int, list[str]]:
    """The max_tokens sent (the caller's, capped by the agent's max_output_tokens) and a warning when it was lowered:
    the cap protects budgets, so it is said rather than cut silently."""
    limit = min(max_tokens, conn.max_output_tokens) if max_tokens is not None else conn.max_output_tokens
    warnings: list[str] = []
    if max_tokens is not None and max_tokens > limit:
        warnings.append(
            f"max_tokens {max_tokens} lowered to {limit}: the max_output_tokens setting of agent {conn.id} "
            "(agents.toml; default 1024)"
        )
    return limit, warnings


def _missing_key(conn: LlmAgentConnection) -> BackendResult:
    """The failed call of an agent whose api_key_env names an unset variable (the provider is never called)."""
    message = f"environment variable {conn.api_key_env} is not set (api_key_env of agent {conn.id})"
    log.warning("agent %s failed (auth): %s", conn.id, message)
    return failed_call("auth", "MissingApiKey", message)


def _deadline_s(conn: LlmAgentConnection, timeout: float, left: float) -> float:
    """The outer deadline of a call with `left` seconds after its slot wait. litellm keys its cached clients by
    their timeout, so it always gets the agent's own: a call's time left as its timeout made a client, an HTTP
    session and a connection per call, and it never closed evicted ones. A shorter limit is this deadline's, which
    lets litellm's own, more informative Timeout fire first when the two are the same."""
    return left + (_TIMEOUT_GRACE_S if timeout >= conn.timeout_s else 0.0)


async def _completion(
    litellm: ModuleType,
    conn: LlmAgentConnection,
    key: str | None,
    messages: list[dict[str, Any]],
    limit: int,
    stream: bool,
) -> Any:
    """The provider's response to one request (a stream of chunks with ``stream``), sent with no retry."""
    kwargs: dict[str, Any] = {}
    if stream:
        kwargs = {"stream": True, "stream_options": {"include_usage": True}}
    return await litellm.acompletion(
        model=conn.model,
        api_base=conn.api_base,
        # a local server may want any key; a hosted provider keeps litellm's own key lookup
        api_key=key or (PLACEHOLDER_API_KEY if conn.api_base else None),
        messages=messages,
        timeout=conn.timeout_s,
        max_tokens=limit,
        max_retries=0,
        **kwargs,
    )


async def _read_reply(response: Any, stream: bool, on_progress: Callable[[int], Awaitable[None]] | None) -> _Reply:
    """The answer and reported usage of a response: its first choice, or the streamed chunks joined."""
    if stream:
        answer, prompt, completion = await _stream_answer(response, on_progress)
        return _Reply(answer, prompt, completion, no_choices=False)
    answer = (response.choices[0].message.content or "") if response.choices else ""
    prompt, completion = _usage_of(response)
    return _Reply(answer, prompt, completion, no_choices=not response.choices)


def _failed_llm_call(
    conn: LlmAgentConnection,
    exc: Exception,
    latency: float,
    timeout: float,
    left: float,
    secrets: tuple[str, ...],
    *,
    answering: bool,
) -> BackendResult:
    """A call that raised, classified (classify_exception), its message scrubbed of secrets and logged; a stream cut
    off mid-answer was generated, so probably billed: its cost is unknown, not 0."""
    error_class = classify_exception(exc)
    message, queued = str(exc) or type(exc).__name__, None
    if error_class == "timeout":
        worded, queued = timeout_message(timeout, left, latency, conn.concurrency)
        if queued or (isinstance(exc, TimeoutError) and not str(exc)):  # litellm's own words say more otherwise
            message = worded
    message = scrub(message, secrets)[:_MESSAGE_LIMIT]
    # the operator's log names the server it could not reach (README QA); the model's message does not: no tool
    # shows connection settings to a model a prompt could turn (review)
    where = f" (api_base {conn.api_base})" if error_class == "connection" and conn.api_base else ""
    log.warning("agent %s failed (%s) after %.2fs: %s%s", conn.id, error_class, latency, message, where)
    return failed_call(error_class, queued or type(exc).__name__, message, latency, answering=answering)


def _answered(
    conn: LlmAgentConnection,
    litellm: ModuleType,
    messages: list[dict[str, Any]],
    reply: _Reply,
    latency: float,
    secrets: tuple[str, ...],
    warnings: list[str],
) -> BackendResult:
    """A completed call's result, priced (_call_cost): its answer scrubbed of secrets, or a server_error when the
    backend sent no choices (an empty completion: the next candidate is tried, competence is untouched)."""
    prompt, completion = reply.prompt_tokens, reply.completion_tokens
    cost, source, cost_warnings, reported = _call_cost(conn, litellm, messages, reply.answer, prompt, completion)
    if cost is None:
        log.warning("agent %s: cost unknown (no price configured or known for model %s)", conn.id, conn.model)
    if reply.no_choices:  # a 200 without an answer: the provider's fault, not the agent failing the step
        message = "the backend answered with no choices (an empty completion)"
        log.warning("agent %s failed (server_error) after %.2fs: %s", conn.id, latency, message)
        return BackendResult(
            latency_s=latency,
            error_class="server_error",
            error_type="EmptyChoices",
            message=message,
            cost_usd=cost,
            cost_source=source,
        )
    return BackendResult(
        answer=scrub(reply.answer, secrets),
        prompt_tokens=prompt if reported else None,  # None: the backend did not say (the cost is estimated)
        completion_tokens=completion if reported else None,
        cost_usd=cost,
        cost_source=source,
        latency_s=latency,
        warnings=warnings + cost_warnings,
    )


# Per-agent concurrency limits; anyio limiters belong to one event loop, hence a RunVar (one dict per loop).
_limiters: RunVar[dict[str, anyio.CapacityLimiter]] = RunVar("skillorchestra_agent_limiters")


QUEUE_FULL = "LocalQueueFull"  # error_type of a call that never started: our own concurrency limit, not the agent


class SlotWait:
    """Whether a call is still waiting for its agent's concurrency slot: a call cancelled then never reached the
    agent, so it cost nothing and its decision can be given back (server/delegation.py). `longest`: the most time
    the wait may take, so a busy agent leaves its fallbacks time (None: the call's own timeout)."""

    def __init__(self, longest: float | None = None) -> None:
        self.waiting = False
        self.longest = longest


# set by the caller around one call; a context variable, so the backends' signatures stay those of a plain call
SLOT_WAIT: ContextVar[SlotWait | None] = ContextVar("skillorchestra_slot_wait", default=None)


async def acquire_slot(agent_id: str, concurrency: int, timeout: float) -> anyio.CapacityLimiter | None:
    """One of the agent's concurrency slots, or None when none frees up within `timeout`."""
    limiter = agent_limiter(agent_id, concurrency)
    wait = SLOT_WAIT.get()
    if wait is not None:
        wait.waiting = True
        if wait.longest is not None and wait.longest < timeout:
            timeout = wait.longest
    with anyio.move_on_after(timeout):
        await limiter.acquire()
        if wait is not None:
            wait.waiting = False
        return limiter
    return None


SLOT_LEFT_MIN_S = 0.05  # time left after a slot wait below which the call is not made (queue_full)


async def slot_within(agent_id: str, concurrency: int, timeout: float) -> tuple[anyio.CapacityLimiter | None, float]:
    """A concurrency slot (acquire_slot) and the seconds of `timeout` left for the call once it is held: the wait
    is part of the call's time (QA: a delegate with timeout_s=6 waited 5.5 s for a slot, then took a fresh 6 s)."""
    started = time.perf_counter()
    limiter = await acquire_slot(agent_id, concurrency, timeout)
    left = timeout - (time.perf_counter() - started)
    if limiter is not None and left < SLOT_LEFT_MIN_S:  # freed at the deadline: no call, as if it never freed
        limiter.release()  # (review: the call timed out at once and was charged to the agent's breaker)
        return None, 0.0
    return limiter, left


QUEUED_TIMEOUT = "QueuedTimeout"  # error_type of a timeout after most of the call's time went waiting for a slot
QUEUED_SHARE = 0.5  # a timeout after a slot wait of this share of the call's time or more: the queue's, not the agent's


def timeout_message(timeout: float, left: float, latency: float, concurrency: int) -> tuple[str, str | None]:
    """A timed-out call's message, and QUEUED_TIMEOUT when the wait for one of the agent's slots took most of its time
    and the agent then used up the rest: it had less time than the call asked for (QA: 16 clients on an agent of 4
    slots, answering in 1.5 s, got 35 timeouts after 0.4-1.5 s with it, worded "no answer within 4.99999 s", and its
    circuit breaker opened). An agent's own quick timeout (a 408 at once) stays its own (review)."""
    waited = timeout - left
    if waited >= QUEUED_SHARE * timeout and latency >= 0.9 * left:
        return (
            f"no answer within {_seconds(left)} s, after {_seconds(waited)} s of the call's {_seconds(timeout)} s "
            f"waiting for one of its {concurrency} concurrency slots (the agent's queue, not its health)",
            QUEUED_TIMEOUT,
        )
    return f"no answer within {_seconds(timeout)} s", None


def _seconds(value: float) -> str:
    """0.47, 5, 300: two decimals at most, no exponent (review: "1e+02 s")."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def queue_full(agent_id: str, concurrency: int, timeout: float) -> BackendResult:
    """A call that never reached the agent: all its slots stayed busy (its health and competence are untouched)."""
    return failed_call(
        "rate_limit", QUEUE_FULL, f"all {concurrency} concurrency slots of {agent_id} stayed busy for {timeout:g} s"
    )


def failed_call(
    error_class: ErrorClass, error_type: str, message: str, latency_s: float = 0.0, *, answering: bool = False
) -> BackendResult:
    """A call that produced no answer, with what it cost (see failed_call_cost; unknown once answering began)."""
    cost, source = (None, "unknown") if answering else failed_call_cost(error_class)
    return BackendResult(
        latency_s=latency_s,
        error_class=error_class,
        error_type=error_type,
        message=message,
        cost_usd=cost,
        cost_source=source,
    )


def failed_call_cost(error_class: ErrorClass) -> tuple[float | None, CostSource]:
    """What a failed call cost: nothing when no completion came back (no connection, no key, or an error
    response: rate limit, provider error, a request it refused; providers bill completions, not errors);
    unknown after a timeout, when the provider may have generated (and billed) an answer we stopped waiting for."""
    if error_class in ("connection", "auth", "rate_limit", "server_error", "task"):
        return 0.0, "no_token_cost"
    return None, "unknown"


class holding_slot:
    """Release a slot taken by acquire_slot when the call ends, however it ends."""

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self.limiter = limiter

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.limiter.release()


def agent_limiter(agent_id: str, concurrency: int) -> anyio.CapacityLimiter:
    """The limiter that caps in-flight calls to one agent at its configured ``concurrency``."""
    try:
        limiters = _limiters.get()
    except LookupError:
        limiters = {}
        _limiters.set(limiters)
    limiter = limiters.get(agent_id)
    if limiter is None:
        limiter = limiters[agent_id] = anyio.CapacityLimiter(concurrency)
    elif limiter.total_tokens != concurrency:
        limiter.total_tokens = concurrency  # settings reloaded
    return limiter
