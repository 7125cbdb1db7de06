"""A per-agent circuit breaker, so a dead provider is skipped instead of eating every step's time budget.

States: ``closed`` (calls allowed) -> ``open`` after ``threshold`` consecutive infrastructure failures
(calls refused) -> ``half_open`` once ``cooldown_s`` has passed, where exactly one trial call is allowed ->
``closed`` on its success, ``open`` again (a fresh cool-down) on its failure. Only infrastructure failures
should be recorded as failures; a wrong answer is a competence matter, not a health one.

The clock is injectable (a ``() -> float`` in seconds, default ``time.monotonic``) so tests need no sleeping.
All methods are thread-safe (one lock), since the MCP server may call from worker threads.

Every change of state is logged once (QA: the operator never saw a provider go dead or come back): WARNING when the
breaker opens (or opens again after a failed trial) and when a success closes it, INFO when a trial call is let
through. A refused call logs nothing: an open breaker is asked on every step, and a line each would flood the log.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from skillorchestra.handbook.errors import counted

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class _Health:
    failures: int = 0  # consecutive infrastructure failures
    opened_at: float | None = None
    trial_in_flight: bool = False
    last_error: str | None = None


class CircuitBreaker:
    """Tracks every agent's health; an agent never seen is closed."""

    def __init__(
        self, threshold: int = 3, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if threshold < 1 or cooldown_s < 0:
            raise ValueError("threshold >= 1 and cooldown_s >= 0")
        self.threshold, self.cooldown_s, self._clock = threshold, cooldown_s, clock
        self._agents: dict[str, _Health] = {}
        self._lock = threading.Lock()

    def _state(self, h: _Health | None) -> BreakerState:
        if h is None or h.opened_at is None:
            return "closed"
        return "half_open" if self._clock() - h.opened_at >= self.cooldown_s else "open"

    def state(self, agent_id: str) -> BreakerState:
        with self._lock:
            return self._state(self._agents.get(agent_id))

    def allow(self, agent_id: str) -> bool:
        """May a call go to this agent now? In half-open, only the first caller gets the trial call."""
        with self._lock:
            h = self._agents.get(agent_id)
            state = self._state(h)
            if state == "closed":
                return True
            if state == "open" or h is None or h.trial_in_flight:
                return False
            h.trial_in_flight = True
            failures, last_error = h.failures, h.last_error
        log.info(
            "circuit breaker of agent %s half-open: one trial call let through (%s, last %s)",
            agent_id,
            counted(failures, "consecutive infrastructure failure"),
            last_error,
        )
        return True

    def would_allow(self, agent_id: str) -> bool:
        """Like ``allow`` but without claiming the trial call: for ranking candidates before choosing one."""
        with self._lock:
            h = self._agents.get(agent_id)
            state = self._state(h)
            return state == "closed" or (state == "half_open" and h is not None and not h.trial_in_flight)

    def record_success(self, agent_id: str) -> None:
        with self._lock:
            h = self._agents.pop(agent_id, None)
        if h is not None and h.opened_at is not None:  # at the opening's level: the default WARNING log showed an
            log.warning(  # agent go down and never come back (QA)
                "circuit breaker of agent %s closed: a call succeeded after %s",
                agent_id,
                counted(h.failures, "infrastructure failure"),
            )

    def record_failure(self, agent_id: str, error: str | None = None) -> BreakerState:
        """Count one infrastructure failure; returns the state after it."""
        with self._lock:
            h = self._agents.setdefault(agent_id, _Health())
            before = self._state(h)
            trial = h.trial_in_flight or before == "half_open"
            h.failures += 1
            h.last_error = error
            opens = trial or h.failures >= self.threshold
            if opens:
                h.opened_at = self._clock()
            h.trial_in_flight = False
            after, failures = self._state(h), h.failures
        retry = whole_seconds(self.cooldown_s)
        if opens and trial:
            log.warning(
                "circuit breaker of agent %s opened again: its half-open call failed (%s, last %s); "
                "tried again in %s s",
                agent_id,
                counted(failures, "consecutive infrastructure failure"),
                error,
                retry,
            )
        elif opens and before == "closed":  # an open breaker's cool-down restarted is no change of state
            log.warning(
                "circuit breaker of agent %s opened after %s (last %s); tried again in %s s",
                agent_id,
                counted(failures, "consecutive infrastructure failure"),
                error,
                retry,
            )
        return after

    def release(self, agent_id: str) -> None:
        """Give back an unused half-open trial (the call was cancelled or never made); counts nothing."""
        with self._lock:
            if (h := self._agents.get(agent_id)) is not None:
                h.trial_in_flight = False

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Agents that are not plainly healthy, for display: state, failures, seconds until half-open."""
        with self._lock:
            now = self._clock()
            out: dict[str, dict[str, object]] = {}
            for agent_id, h in self._agents.items():
                retry_in = None
                if h.opened_at is not None:
                    retry_in = max(0.0, round(h.opened_at + self.cooldown_s - now, 3))
                out[agent_id] = {
                    "state": self._state(h),
                    "consecutive_failures": h.failures,
                    "retry_in_s": retry_in,
                    "last_error": h.last_error,
                }
            return out


def whole_seconds(seconds: float) -> str:
    """Whole seconds, rounded up: "tried again in 0 s" would read as now while the breaker is still open."""
    return str(math.ceil(seconds))
