"""The node's loops: a round never overlaps the one running, a wake-up during a round gives
exactly one more round right after it, a round that asks for more runs again at once, and a
round that raises is logged and the loop goes on."""

from __future__ import annotations

import logging
import threading
import time

from node.loop import Loop


def test_wake_ups_during_a_round_give_one_more_round_and_never_an_overlap():
    running = threading.Lock()
    entered = threading.Event()
    release = threading.Event()
    rounds = []

    def step():
        assert running.acquire(blocking=False), "two rounds at once"
        rounds.append(time.monotonic())
        entered.set()
        release.wait(5)
        running.release()

    loop = Loop("test", step, interval_s=60).start()
    assert entered.wait(5)
    for _ in range(20):  # what the scheduler used to answer with "skipped" warnings
        loop.wake()
    entered.clear()
    release.set()
    assert entered.wait(5)  # the one round the wake-ups asked for
    time.sleep(0.3)
    loop.stop()
    assert len(rounds) == 2


def test_a_round_that_finds_more_work_runs_again_at_once_and_at_stop_runs_last():
    left = [3]
    done = []

    def step():
        left[0] -= 1
        return left[0] > 0

    loop = Loop("test", step, interval_s=60, at_stop=lambda: done.append(left[0])).start()
    time.sleep(0.3)
    loop.stop()
    assert done == [0]  # three rounds without waiting, then the stop's last word


def test_a_round_that_raises_is_logged_and_the_loop_goes_on(caplog):
    calls = []

    def step():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="node.loop"):
        loop = Loop("delivery", step, interval_s=0.05).start()
        time.sleep(0.5)
        loop.stop()
    assert len(calls) > 2
    (record,) = caplog.records
    assert record.getMessage() == "delivery failed; retrying on the next round"
