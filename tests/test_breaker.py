"""The per-agent circuit breaker, driven by a fake clock (no sleeping)."""

from __future__ import annotations

import logging
import threading

import pytest
from log_capture import formatted_log

from skillorchestra.server.breaker import CircuitBreaker

BREAKER_LOG = "skillorchestra.server.breaker"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_opens_after_threshold_consecutive_failures(clock: FakeClock) -> None:
    b = CircuitBreaker(threshold=3, cooldown_s=30, clock=clock)
    assert b.state("a") == "closed" and b.allow("a")
    assert b.record_failure("a", "timeout") == "closed"
    assert b.record_failure("a", "timeout") == "closed"
    assert b.record_failure("a", "timeout") == "open"
    assert not b.allow("a") and not b.would_allow("a")
    assert b.state("other") == "closed" and b.allow("other")  # per agent


def test_success_resets_the_count(clock: FakeClock) -> None:
    b = CircuitBreaker(threshold=3, clock=clock)
    b.record_failure("a")
    b.record_failure("a")
    b.record_success("a")
    b.record_failure("a")
    b.record_failure("a")
    assert b.state("a") == "closed"


def test_half_open_allows_one_trial_then_closes_on_success(clock: FakeClock) -> None:
    b = CircuitBreaker(threshold=1, cooldown_s=30, clock=clock)
    b.record_failure("a")
    clock.now += 29.9
    assert b.state("a") == "open" and not b.allow("a")
    clock.now += 0.1
    assert b.state("a") == "half_open" and b.would_allow("a")
    assert b.allow("a")  # the trial call
    assert not b.allow("a") and not b.would_allow("a")  # only one at a time
    b.record_success("a")
    assert b.state("a") == "closed" and b.allow("a") and b.allow("a")


def test_half_open_failure_reopens_for_a_full_cooldown(clock: FakeClock) -> None:
    b = CircuitBreaker(threshold=3, cooldown_s=10, clock=clock)
    for _ in range(3):
        b.record_failure("a")
    clock.now += 10
    assert b.allow("a")
    assert b.record_failure("a", "connection") == "open"  # one failure suffices in half-open
    clock.now += 9
    assert b.state("a") == "open"
    clock.now += 1
    assert b.state("a") == "half_open"


def test_released_trial_can_be_taken_again(clock: FakeClock) -> None:
    b = CircuitBreaker(threshold=1, cooldown_s=0, clock=clock)
    b.record_failure("a")
    assert b.allow("a") and not b.allow("a")
    b.release("a")
    assert b.allow("a")


def test_snapshot_for_display(clock: FakeClock) -> None:
    b = CircuitBreaker(threshold=2, cooldown_s=30, clock=clock)
    b.record_failure("a", "rate_limit")
    b.record_failure("b", "timeout")
    b.record_failure("b", "timeout")
    clock.now += 10
    snap = b.snapshot()
    assert snap["a"] == {"state": "closed", "consecutive_failures": 1, "retry_in_s": None, "last_error": "rate_limit"}
    assert snap["b"]["state"] == "open" and snap["b"]["retry_in_s"] == pytest.approx(20.0)
    b.record_success("b")
    assert "b" not in b.snapshot()


def test_thread_safe_trial_is_granted_once(clock: FakeClock) -> None:
    b = CircuitBreaker(threshold=1, cooldown_s=0, clock=clock)
    b.record_failure("a")
    grants: list[bool] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        grants.append(b.allow("a"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert grants.count(True) == 1


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0)


def _records(text: str) -> list[str]:
    """The formatted records without their timestamps ("<date> <time> LEVEL name: message")."""
    return [line.split(" ", 2)[2] for line in text.splitlines()]


def test_each_change_of_state_is_logged_once_and_a_refused_call_not_at_all(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: ~200 delegate steps and the operator's log never said an agent's breaker had opened or closed again."""
    caplog.set_level(logging.INFO, logger=BREAKER_LOG)
    b = CircuitBreaker(threshold=3, cooldown_s=30, clock=clock)
    with formatted_log(BREAKER_LOG) as stream:
        b.record_failure("mid", "timeout")
        b.record_failure("mid", "timeout")
        assert stream.getvalue() == ""  # still closed
        b.record_failure("mid", "server_error")
        for _ in range(50):  # refused calls: no line each
            assert not b.allow("mid")
        b.record_failure("mid", "server_error")  # a call in flight before it opened: the cool-down restarts
        clock.now += 30
        assert b.allow("mid")  # half-open: the trial call
        assert not b.allow("mid")
        b.record_failure("mid", "connection")  # the trial failed
        clock.now += 30
        assert b.allow("mid")
        b.record_success("mid")
        b.record_success("mid")  # already closed: nothing to say
    assert _records(stream.getvalue()) == [
        f"WARNING {BREAKER_LOG}: circuit breaker of agent mid opened after 3 consecutive infrastructure failures "
        "(last server_error); tried again in 30 s",
        f"INFO {BREAKER_LOG}: circuit breaker of agent mid half-open: one trial call let through "
        "(4 consecutive infrastructure failures, last server_error)",
        f"WARNING {BREAKER_LOG}: circuit breaker of agent mid opened again: its half-open call failed "
        "(5 consecutive infrastructure failures, last connection); tried again in 30 s",
        f"INFO {BREAKER_LOG}: circuit breaker of agent mid half-open: one trial call let through "
        "(5 consecutive infrastructure failures, last connection)",
        f"WARNING {BREAKER_LOG}: circuit breaker of agent mid closed: a call succeeded after 5 infrastructure failures",
    ]


def test_a_breaker_without_cooldown_still_says_it_opened(clock: FakeClock) -> None:
    """With cooldown_s = 0 the breaker is half-open at once; the opening is a change of state all the same."""
    b = CircuitBreaker(threshold=1, cooldown_s=0, clock=clock)
    with formatted_log(BREAKER_LOG) as stream:
        assert b.record_failure("a", "rate_limit") == "half_open"
    assert _records(stream.getvalue()) == [
        f"WARNING {BREAKER_LOG}: circuit breaker of agent a opened after 1 consecutive infrastructure failure "
        "(last rate_limit); tried again in 0 s"
    ]
