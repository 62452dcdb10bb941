"""The lock of a stack: one writer at a time, waited for up to a timeout.

How a lock is held is the backend's (a row naming a process on SQLite, an advisory
lock of a server session on PostgreSQL); waiting for it and telling who holds it is
the same for both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from mlinfra.errors import MlinfraError
from mlinfra.state.model import LockInfo
from mlinfra.state.store import StateStore


class LockHeld(MlinfraError):
    """Another process holds the stack's lock."""


@contextmanager
def locked(store: StateStore, stack: str, command: str, timeout: float = 0) -> Iterator[str]:
    """Hold the stack's lock for the block; wait up to `timeout` seconds for it."""
    deadline = time.monotonic() + timeout
    while True:
        lock_id, info = store.try_lock(stack, command)
        if lock_id is not None:
            break
        assert info is not None
        if time.monotonic() >= deadline:
            waited = (f"It was still held after waiting {timeout:g}s (--lock-timeout); wait "
                      "longer" if timeout else "Wait for it to finish (--lock-timeout 5m waits)")
            raise LockHeld(
                f"the state of stack '{stack}' is locked: {info.describe()}.\n"
                f"{waited}, or, if that process is gone for good, run: "
                f"mlinfra state unlock {info.id}", stack=stack, lock_id=info.id,
                holder=f"{info.owner} (pid {info.pid} on {info.host})")
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    try:
        yield lock_id
    finally:
        store.release_lock(stack, lock_id)


def force_unlock(store: StateStore, stack: str, lock_id: str) -> LockInfo:
    info = store.lock_holder(stack)
    if info is None:
        raise MlinfraError(f"stack '{stack}' is not locked")
    if info.id != lock_id:
        raise MlinfraError(f"the lock of stack '{stack}' has ID {info.id}, not {lock_id}")
    store.break_lock(stack, info)
    return info
