"""What every page of the studio reads: the project, its stack's state opened
read-only, and the runs table kept in memory.

The state is opened once and read on every request (a read-only SQLite connection
sees each apply's committed changes; PostgreSQL likewise). A stack with no state yet
is read again on each request until its first apply made one. The configuration is
loaded again for the plan, which must see the YAML as it is now.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlinfra.engine import Session, open_session
from mlinfra.state.store import StateStore
from mlinfra.studio.runs_index import RunIndex

COMMAND = "studio"
# Keys whose values the studio never shows, wherever they appear.
_SECRET_KEY = re.compile(r"(pass(word)?|secret|token|api[_-]?key|credential|private)",
                         re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)
HIDDEN = "(hidden)"


@dataclass(frozen=True)
class StudioOptions:
    """Where the project is, which stack, and where the studio listens."""

    directory: Path
    stack: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None


class Studio:
    """The open stack. Invariant: its store is read-only."""

    def __init__(self, options: StudioOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        self.session = open_session(options.directory, options.stack, COMMAND, write=False)
        self.runs = RunIndex(self.session.store)

    @property
    def store(self) -> StateStore:
        if self.session.store.version().lineage == "":
            self._reopen()
        return self.session.store

    def _reopen(self) -> None:
        """A stack with no state when the studio started: open it once it exists."""
        with self._lock:
            fresh = open_session(self.options.directory, self.options.stack, COMMAND,
                                 write=False)
            if fresh.store.version().lineage == "":
                fresh.close()
                return
            old, self.session = self.session, fresh
            self.runs = RunIndex(fresh.store)
            old.close()

    def fresh_session(self) -> Session:
        """The project as its files are now, on the same stack: for the plan. The state
        open already is lent to it (opening a large one again checks the whole file),
        unless the stack file now names another state; closing a lent session leaves
        the studio's state open."""
        from mlinfra.engine import state_dir, state_location
        from mlinfra.providers import get_provider
        from mlinfra.providers.base import Context
        from mlinfra.spec import load

        config = load(self.options.directory, self.options.stack)
        current = self.session.config
        if (config.stack.name, config.stack.state) != (current.stack.name, current.stack.state) \
                or state_location(config) != state_location(current):
            return open_session(self.options.directory, self.options.stack, COMMAND,
                                write=False)
        store = self.store
        provider = get_provider(config.stack.provider)
        provider.prepare(config, COMMAND)
        ctx = Context(config=config, store=store, state_dir=state_dir(config),
                      log=lambda _: None, provider=provider)
        return _Lent(config, store, provider, ctx)

    @property
    def root(self) -> Path:
        return self.session.config.root

    def close(self) -> None:
        self.session.close()


class _Lent(Session):
    """A session on the studio's own store: closing it keeps the store open."""

    def close(self) -> None:
        pass


def redact(value: Any) -> Any:
    """`value` as the studio may show it: values under a key that names a secret are
    hidden, and a URL's user and password are dropped."""
    if isinstance(value, dict):
        return {k: HIDDEN if isinstance(k, str) and _SECRET_KEY.search(k)
                and value[k] not in (None, "", {}, []) else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _URL_USERINFO.sub(r"\g<scheme>", value)
    return value
