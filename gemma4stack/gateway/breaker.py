"""A circuit breaker per tier, with an injected clock so tests can move time.

States (after Nygard, "Release It!", ch. 5 "Circuit Breaker"):

    CLOSED    --`failures` failures inside `window_s`-->   OPEN
    OPEN      --`cooldown_s` elapsed (checked lazily)-->   HALF_OPEN
    HALF_OPEN --admits exactly one probe request; its success--> CLOSED
                                               its failure  --> OPEN (a fresh cooldown)

Only the caller decides what a failure is (backends.py: timeouts, connection errors, 5xx;
not 4xx nor context-length errors). Each admitted request holds a Ticket and reports
exactly one of success() / failure() / release() (release = neither, e.g. the client went
away or the backend answered 4xx), so a late result from a request admitted before the
breaker opened cannot close it or steal the half-open probe slot.

Not thread-safe: used from the gateway's event loop only.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Callable


class State(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def gauge(self) -> int:
        """Value of the Prometheus gauge: 0 closed, 1 half-open, 2 open."""
        return {"closed": 0, "half_open": 1, "open": 2}[self.value]


@dataclass
class Ticket:
    """Permission for one request; report its outcome once."""
    breaker: "CircuitBreaker"
    probe: bool
    epoch: int            # the breaker's epoch when admitted; stale tickets are ignored
    done: bool = False

    def success(self):
        if not self.done:
            self.done = True
            self.breaker._on_success(self)

    def failure(self):
        if not self.done:
            self.done = True
            self.breaker._on_failure(self)

    def release(self):
        if not self.done:
            self.done = True
            self.breaker._on_release(self)


class CircuitBreaker:
    """failures: N failures inside window_s (seconds) open it; cooldown_s: OPEN -> HALF_OPEN.

    clock: a function returning seconds (time.monotonic by default).
    on_change(old, new): called on every state transition (for logs and metrics).
    """

    def __init__(self, failures: int = 3, window_s: float = 30.0, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[State, State], None] | None = None):
        if failures < 1 or window_s <= 0 or cooldown_s <= 0:
            raise ValueError("failures must be >= 1 and window_s, cooldown_s > 0")
        self.failures, self.window_s, self.cooldown_s = failures, window_s, cooldown_s
        self.clock, self.on_change = clock, on_change
        self._state = State.CLOSED
        self._recent: deque[float] = deque()     # failure times inside the window
        self._opened_at = 0.0
        self._probe_out = False
        self._epoch = 0                          # bumps on every transition

    # -- state
    @property
    def state(self) -> State:
        if self._state is State.OPEN and self.clock() - self._opened_at >= self.cooldown_s:
            self._move(State.HALF_OPEN)
        return self._state

    def retry_after(self) -> float:
        """Seconds until an OPEN breaker lets a probe through (0 when it would now)."""
        if self.state is State.OPEN:
            return max(0.0, self._opened_at + self.cooldown_s - self.clock())
        return 0.0

    def can_serve(self) -> bool:
        """Would allow() admit a request now? (no side effects beyond the lazy OPEN check)"""
        s = self.state
        return s is State.CLOSED or (s is State.HALF_OPEN and not self._probe_out)

    def allow(self) -> Ticket | None:
        """Admit a request (a Ticket) or refuse it (None) in the current state."""
        s = self.state
        if s is State.CLOSED:
            return Ticket(self, False, self._epoch)
        if s is State.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return Ticket(self, True, self._epoch)
        return None

    # -- outcomes
    def _on_success(self, t: Ticket):
        if t.probe and t.epoch == self._epoch and self._state is State.HALF_OPEN:
            self._recent.clear()
            self._move(State.CLOSED)

    def _on_failure(self, t: Ticket):
        now = self.clock()
        if t.probe and t.epoch == self._epoch and self._state is State.HALF_OPEN:
            self._open(now)
            return
        if self._state is not State.CLOSED:
            return        # a late failure from before the breaker opened changes nothing
        self._recent.append(now)
        while self._recent and now - self._recent[0] > self.window_s:
            self._recent.popleft()
        if len(self._recent) >= self.failures:
            self._open(now)

    def _on_release(self, t: Ticket):
        if t.probe and t.epoch == self._epoch and self._state is State.HALF_OPEN:
            self._probe_out = False    # the probe told us nothing; let the next request probe

    def _open(self, now: float):
        self._opened_at = now
        self._recent.clear()
        self._move(State.OPEN)

    def _move(self, new: State):
        old, self._state = self._state, new
        self._epoch += 1
        self._probe_out = False
        if self.on_change and old is not new:
            self.on_change(old, new)

    def to_dict(self) -> dict:
        return {"state": self.state.value, "recent_failures": len(self._recent),
                "retry_after_s": round(self.retry_after(), 3)}
