"""The lock of a stack: one writer at a time, and locks of dead processes recognised."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mlinfra.errors import MlinfraError
from mlinfra.state.model import LockInfo
from mlinfra.state.sqlite import HOST, SqliteStore, current_user, pid_alive


class LockHeld(MlinfraError):
    """Another process holds the stack's lock."""


def holder(store: SqliteStore, stack: str) -> LockInfo | None:
    rows = store.query("SELECT id, owner, host, pid, command, created_at FROM locks "
                       "WHERE stack=?", (stack,))
    return LockInfo(*rows[0]) if rows else None


def is_stale(info: LockInfo) -> bool:
    """A lock taken on this host by a process that no longer runs."""
    return info.host == HOST and not pid_alive(info.pid)


def _try_acquire(store: SqliteStore, stack: str, command: str) -> tuple[str | None,
                                                                        LockInfo | None]:
    """(lock id, None) when taken; (None, holder) when someone else has it."""
    with store.transaction() as cur:
        row = cur.execute("SELECT id, owner, host, pid, command, created_at FROM locks "
                          "WHERE stack=?", (stack,)).fetchone()
        if row is not None:
            info = LockInfo(*row)
            if not is_stale(info):
                return None, info
            cur.execute("DELETE FROM locks WHERE stack=?", (stack,))
        lock_id = os.urandom(6).hex()
        cur.execute("INSERT INTO locks VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (stack, lock_id, current_user(), HOST, os.getpid(), command, time.time()))
        return lock_id, None


@contextmanager
def locked(store: SqliteStore, stack: str, command: str, timeout: float = 0) -> Iterator[str]:
    """Hold the stack's lock for the block; wait up to `timeout` seconds for it."""
    deadline = time.monotonic() + timeout
    while True:
        lock_id, info = _try_acquire(store, stack, command)
        if lock_id is not None:
            break
        assert info is not None
        if time.monotonic() >= deadline:
            raise LockHeld(
                f"the state of stack '{stack}' is locked: {info.describe()}.\n"
                f"Wait for it to finish (--lock-timeout 5m waits), or, if that process is "
                f"gone for good, run: mlinfra state unlock {info.id}")
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    try:
        yield lock_id
    finally:
        with store.transaction() as cur:
            cur.execute("DELETE FROM locks WHERE stack=? AND id=?", (stack, lock_id))


def force_unlock(store: SqliteStore, stack: str, lock_id: str) -> LockInfo:
    info = holder(store, stack)
    if info is None:
        raise MlinfraError(f"stack '{stack}' is not locked")
    if info.id != lock_id:
        raise MlinfraError(f"the lock of stack '{stack}' has ID {info.id}, not {lock_id}")
    with store.transaction() as cur:
        cur.execute("DELETE FROM locks WHERE stack=? AND id=?", (stack, lock_id))
    return info
