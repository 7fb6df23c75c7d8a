"""poll() waiters and their bounds (netfs.fs.waiters): no kernel, no root."""

from __future__ import annotations

import logging

import pytest

from netfs.fs.waiters import MAX_WAITERS, MAX_WAITERS_TOTAL, Waiters

ACTIVE = ("testA", "active")
ERROR = ("testA", "error")


class _Waker:
    def __init__(self, woken: list[int], fh: int) -> None:
        self.woken, self.fh = woken, fh

    def notify(self) -> None:
        self.woken.append(self.fh)


def test_a_user_keeps_a_bounded_number_of_waiters_root_any() -> None:
    w, woken = Waiters(), []
    kept = [w.add(ACTIVE, fh, _Waker(woken, fh), 1000) for fh in range(MAX_WAITERS + 5)]
    assert kept == [True] * MAX_WAITERS + [False] * 5
    assert all(w.add(ERROR, fh, _Waker(woken, fh), 0) for fh in range(1000, 3000))
    assert w.add(ERROR, 5000, _Waker(woken, 5000), 1001)  # another user has its own
    w.wake(ACTIVE)
    assert woken == list(range(MAX_WAITERS))
    assert not w.waiting(ACTIVE)
    # woken waiters are forgotten: the user may wait again
    assert w.add(ACTIVE, 7, _Waker(woken, 7), 1000)


def test_all_users_but_root_together_are_bounded() -> None:
    w = Waiters()
    fh = 0
    for uid in range(1000, 1000 + MAX_WAITERS_TOTAL // MAX_WAITERS):
        for _ in range(MAX_WAITERS):
            assert w.add(ACTIVE, fh, _Waker([], fh), uid)
            fh += 1
    assert w.total == MAX_WAITERS_TOTAL
    assert not w.add(ACTIVE, fh, _Waker([], fh), 99999)
    assert w.add(ACTIVE, fh, _Waker([], fh), 0)
    w.drop(0)  # a closed file makes room
    assert w.add(ERROR, fh + 1, _Waker([], fh + 1), 99999)


def test_waiting_again_or_closing_counts_once() -> None:
    w, woken = Waiters(), []
    for _ in range(3 * MAX_WAITERS):  # the same open file polled again and again
        assert w.add(ACTIVE, 1, _Waker(woken, 1), 1000)
    assert w.total == 1
    w.drop(1)
    w.drop(1)
    assert w.total == 0 and not w.waiting(ACTIVE)
    w.wake(ACTIVE)
    assert woken == []


def test_root_is_woken_first_and_a_dead_waker_stops_nothing() -> None:
    w, woken = Waiters(), []

    class Dead:
        def notify(self) -> None:
            raise OSError("gone")

    w.add(ACTIVE, 1, _Waker(woken, 1), 1000)
    w.add(ACTIVE, 2, Dead(), 1000)
    w.add(ACTIVE, 3, _Waker(woken, 3), 0)
    w.add(ACTIVE, 4, _Waker(woken, 4), 1001)
    w.wake(ACTIVE)
    assert woken == [3, 1, 4]
    assert w.total == 0


def test_a_refused_wait_is_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    w = Waiters()
    caplog.set_level(logging.WARNING, logger="netfs.fs")
    for fh in range(MAX_WAITERS + 10):
        w.add(ACTIVE, fh, _Waker([], fh), 1000)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "uid 1000" in lines[0] and f"{MAX_WAITERS} waiting" in lines[0]
