"""What one key may ask of a shared server: bounded queues, per-key limits, a daily budget.

The dispatcher takes jobs round-robin across keys (`Store.next_queued`), so one key's hundred
jobs do not starve another key's one; `admit` refuses a job at submit when a bound is reached,
with 429 and a `Retry-After` the client can wait for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError
from .store import Store

DAY_S = 24 * 3600.0


@dataclass(frozen=True)
class Policy:
    """The server's limits per model and per key (`nnsight-graph serve --max-queue ...`)."""

    max_queue: int = 256  # jobs queued or running per model
    max_queued_per_key: int = 64  # jobs one key may have queued (all models)
    max_running_per_key: int = 2  # jobs of one key that run at once (all models)
    budgets: dict[str, float] = field(default_factory=dict)  # user -> wall seconds per day

    def remaining(self, store: Store, user: str, now: float | None = None) -> float | None:
        """Wall seconds of the key's daily budget left (None: no budget)."""
        budget = self.budgets.get(user)
        if budget is None:
            return None
        now = time.time() if now is None else now
        return max(budget - store.seconds_used(user, day_start(now), now), 0.0)


def day_start(now: float) -> float:
    """The start of the UTC day holding `now`: budgets renew then."""
    return now - now % DAY_S


def admit(store: Store, policy: Policy, user: str, model: str) -> None:
    """Refuse (ApiError 429) a new job of `user` for `model` when a bound is reached."""
    if store.queue_depth(model) >= policy.max_queue:
        raise ApiError(429, "queue_full",
                       f"the queue of {model!r} holds {policy.max_queue} jobs, its limit",
                       "wait and submit again (Retry-After says when to try)",
                       headers={"Retry-After": "5"})
    queued = store.counts(user)["jobs_queued"]
    if queued >= policy.max_queued_per_key:
        raise ApiError(429, "too_many_jobs",
                       f"this key has {queued} jobs queued, its limit of "
                       f"{policy.max_queued_per_key}",
                       "wait for some to finish (or cancel some) before submitting more",
                       headers={"Retry-After": "5"})
    left = policy.remaining(store, user)
    if left is not None and left <= 0:
        now = time.time()
        wait = int(day_start(now) + DAY_S - now) + 1
        raise ApiError(429, "budget_spent",
                       f"this key used its {policy.budgets[user]:g} s of run time for today",
                       "the budget renews at 00:00 UTC; ask the operator for a larger one",
                       headers={"Retry-After": str(wait)})


def whoami(store: Store, policy: Policy, user: str) -> dict[str, Any]:
    """The key's view of its share: jobs queued and running, budget and what is left."""
    return {
        "user": user,
        **store.counts(user),
        "budget_s_per_day": policy.budgets.get(user),
        "budget_s_left": policy.remaining(store, user),
        "limits": {"max_queued_per_key": policy.max_queued_per_key,
                   "max_running_per_key": policy.max_running_per_key,
                   "max_queue": policy.max_queue},
    }


__all__ = ["Policy", "admit", "day_start", "whoami"]
