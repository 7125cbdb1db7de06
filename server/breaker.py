"""A per-agent circuit breaker, so a dead provider is skipped instead of eating every step's time budget.

States: ``closed`` (calls allowed) -> ``open`` after ``threshold`` consecutive infrastructure failures
(calls refused) -> ``half_open`` once ``cooldown_s`` has passed, where exactly one trial call is allowed ->
``closed`` on its success, ``open`` again (a fresh cool-down) on its failure. Only infrastructure failures
should be recorded as failures; a wrong answer is a competence matter, not a health one.

The clock is injectable (a ``() -> float`` in seconds, default ``time.monotonic``) so tests need no sleeping.
All methods are thread-safe (one lock), since the MCP server may call from worker threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

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
            return True

    def would_allow(self, agent_id: str) -> bool:
        """Like ``allow`` but without claiming the trial call: for ranking candidates before choosing one."""
        with self._lock:
            h = self._agents.get(agent_id)
            state = self._state(h)
            return state == "closed" or (state == "half_open" and h is not None and not h.trial_in_flight)

    def record_success(self, agent_id: str) -> None:
        with self._lock:
            self._agents.pop(agent_id, None)

    def record_failure(self, agent_id: str, error: str | None = None) -> BreakerState:
        """Count one infrastructure failure; returns the state after it."""
        with self._lock:
            h = self._agents.setdefault(agent_id, _Health())
            h.failures += 1
            h.last_error = error
            if h.trial_in_flight or self._state(h) == "half_open" or h.failures >= self.threshold:
                h.opened_at = self._clock()
            h.trial_in_flight = False
            return self._state(h)

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
