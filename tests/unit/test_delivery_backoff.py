"""Retry timing of refused or failed sends: exponential, jittered, capped, then given up."""

from __future__ import annotations

import random
from datetime import timedelta
from types import SimpleNamespace

from node.config import Settings
from node.delivery import Delivery
from storage.schema import OutboxItem, utcnow


def delay(settings: Settings, attempts: int, age_s: float = 0.0) -> float | None:
    row = OutboxItem(attempts=attempts, created_at=utcnow() - timedelta(seconds=age_s))
    found = Delivery._retry_delay(SimpleNamespace(settings=settings), row)
    return None if found is None else found.total_seconds()


def test_backoff_doubles_from_the_initial_delay_up_to_the_cap_with_jitter():
    random.seed(7)
    settings = Settings(delivery_retry_initial_s=5, delivery_retry_max_s=300)
    for attempts, base in [(0, 5), (1, 10), (2, 20), (3, 40), (5, 160), (6, 300), (30, 300)]:
        seen = [delay(settings, attempts) for _ in range(200)]
        assert all(0.8 * base <= d <= 1.2 * base for d in seen), (attempts, min(seen), max(seen))
        assert len(set(seen)) > 1  # jittered: senders retrying together drift apart


def test_delivery_is_given_up_after_the_configured_age():
    settings = Settings(delivery_give_up_after_s=60)
    assert delay(settings, 3, age_s=59) is not None
    assert delay(settings, 3, age_s=61) is None
