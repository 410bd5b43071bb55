"""Reconnect/resubscribe delays: exponential growth with full jitter, floored at the minimum."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, min_delay: float, max_delay: float) -> None:
        if min_delay <= 0 or max_delay < min_delay:
            raise ValueError("need 0 < min_delay <= max_delay")
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.attempt = 0

    def next(self) -> float:
        """The delay before the next attempt; each call widens the window."""
        cap = min(self.max_delay, self.min_delay * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        # Jitter spreads reconnecting clients apart after a server restart.
        return random.uniform(self.min_delay, cap)

    def reset(self) -> None:
        self.attempt = 0
