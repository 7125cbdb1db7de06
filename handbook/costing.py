"""The expected cost of one call: the single rule the service, the replay evaluator and the eval scorer share.

A recorded mean cost per (agent, skill) is what that agent usually costs on that kind of step, but the step in
hand may be much longer or shorter than usual, and input tokens are billed per token. So when the agent has an
input price and its records say how long their steps were, the recorded mean is moved by the price of the
difference between this step's tokens and theirs: a long context makes a large model's call dear, a one-liner
makes it cheap. Both sides are the router's own estimate (characters / 4 of the text and any context sent), not
the provider's count, which also holds system prompts and templates and would make every step look short.
Without records the cost is the price of (this text's tokens, 256 completion tokens); without either it is
unknown, and `charge_unknown` charges it at least c_ref.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from skillorchestra.handbook.arrays import HandbookArrays
from skillorchestra.handbook.models import CHARS_PER_TOKEN, DEFAULT_COMPLETION_TOKENS
from skillorchestra.handbook.router import nan_to_num  # np.nan_to_num's result, without its overhead

MIN_SHARE_OF_RECORDED = 0.1  # a short text never makes a call look cheaper than a tenth of its recorded mean


def prompt_tokens(texts: Sequence[str]) -> np.ndarray:
    """(n,) token estimates of the texts (4 characters a token, as the data converters estimate them)."""
    return np.array([len(text) / CHARS_PER_TOKEN for text in texts], dtype=float)


_GATHER_CELLS = 1 << 16  # steps x demanded columns x agents gathered at once (512 KB a temporary)


def _weighted(table: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n, A) sum_k w[:, k] * table[:, cols[:, k]]; NaN where a cell with a positive weight is NaN.

    One gather and one nan_to_num for all k (a route's hot path: per-k calls cost 2.5x), in chunks of steps so a
    replay over thousands keeps its temporaries small; the sum still runs over k in order, so the results are
    bit-identical to summing column by column."""
    n, k = cols.shape
    chunk = max(1, _GATHER_CELLS // max(1, k * table.shape[0]))
    if n > chunk:
        return np.concatenate(
            [_weighted(table, cols[i : i + chunk], weights[i : i + chunk]) for i in range(0, n, chunk)]
        )
    values = table.T[cols]  # (n, k, A)
    positive = weights[:, :, None] > 0
    terms = np.where(positive, weights[:, :, None] * nan_to_num(values), 0.0)
    out = np.zeros((n, table.shape[0]))
    for j in range(k):
        out += terms[:, j]
    return np.where((positive & np.isnan(values)).any(axis=1), np.nan, out)


def priced_costs(arrays: HandbookArrays, tokens: np.ndarray) -> np.ndarray:
    """(n, A) price of (tokens, 256 completion tokens) plus the agent's price per call; NaN for an agent with
    neither (an MCP tool agent has a price per call and no token prices)."""
    by_tokens = (tokens[:, None] * arrays.input_price + DEFAULT_COMPLETION_TOKENS * arrays.output_price) / 1e6
    if not np.any(~np.isnan(arrays.call_price)):
        return by_tokens  # no agent priced per call: the arithmetic of every handbook before per-call prices
    per_call = np.broadcast_to(arrays.call_price, by_tokens.shape)
    unknown = np.isnan(by_tokens) & np.isnan(per_call)
    return np.where(unknown, np.nan, nan_to_num(by_tokens) + nan_to_num(per_call))


def expected_costs(arrays: HandbookArrays, tokens: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n, A) expected USD per call for n steps with `tokens` (n,) prompt tokens demanding columns `cols` (n, k)
    with `weights` (n, k) summing to 1; NaN where the agent has neither a cost record nor prices."""
    recorded = _weighted(arrays.cost_mean, cols, weights)  # NaN: the agent has no cost record at all
    usual_prompt = _weighted(arrays.prompt_mean, cols, weights)  # NaN: some demanded cost has too few known lengths
    shift = tokens[:, None] - usual_prompt
    moved = recorded + nan_to_num(shift * arrays.input_price / 1e6)
    moved = np.maximum(moved, MIN_SHARE_OF_RECORDED * recorded)
    return np.where(np.isnan(recorded), priced_costs(arrays, tokens), moved)


def unknown_charges(cost: np.ndarray, known: np.ndarray, refs: np.ndarray, enabled: np.ndarray) -> np.ndarray:
    """(n,) what each step charges an agent of unknown cost: its c_ref, or the dearest known enabled agent's expected
    cost of that step when a long text makes that higher (`known` marks the figures of (n, A) `cost` to go by)."""
    dearest = np.max(np.where(known & enabled[None, :], cost, -np.inf), axis=1, initial=-np.inf)
    return np.maximum(refs, dearest)


def charge_unknown(cost: np.ndarray, refs: np.ndarray, enabled: np.ndarray) -> np.ndarray:
    """(n, A) costs with each unknown one charged as `unknown_charges` says: an agent of unknown cost never looks
    cheap."""
    known = ~np.isnan(cost)
    return np.where(known, cost, unknown_charges(cost, known, refs, enabled)[:, None])


def unknown_charge(cost: np.ndarray, known: np.ndarray, enabled: np.ndarray, c_ref: float) -> float:
    """`unknown_charges` of one step whose (A,) `cost` is already charged (route keeps it with the decision)."""
    return float(unknown_charges(cost[None, :], known[None, :], np.array([c_ref]), enabled)[0])


def step_costs(
    arrays: HandbookArrays, tokens: float, cols: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """One step of `tokens`: (A,) expected cost per agent with unknown ones charged, (A,) which were known, c_ref."""
    step = np.array([tokens])
    cost = expected_costs(arrays, step, cols[None, :], weights[None, :])
    refs = reference_costs(arrays, step)
    return charge_unknown(cost, refs, arrays.enabled)[0], ~np.isnan(cost[0]), float(refs[0])


def reference_costs(arrays: HandbookArrays, tokens: np.ndarray) -> np.ndarray:
    """(n,) c_ref per step: the highest typical cost per call (recorded mean, else priced) over enabled agents;
    0 when no enabled agent's cost is known."""
    typical = np.where(np.isnan(arrays.agent_cost)[None, :], priced_costs(arrays, tokens), arrays.agent_cost)
    pool = arrays.enabled[None, :] & ~np.isnan(typical)
    if not typical.shape[1]:
        return np.zeros(len(tokens))
    return np.where(pool.any(axis=1), np.max(np.where(pool, typical, -np.inf), axis=1), 0.0)
