"""State: what mlinfra created, as it last saw it, and who may change it now.

`model` says what a state is; `store` is the interface of its storage (one transaction
per change, serial + lineage, a journal of pending operations, an audit log, the lock)
with two backends, `sqlite` (the default, a file per stack) and `postgres` (a schema
per stack on a server, for teams); `schema` holds the tables and their migrations,
`lock` who may write, `transfer` copies a state between backends. The model registry,
runs and data versions keep their tables in the same store.
"""

from mlinfra.state.backends import open_store
from mlinfra.state.model import LockInfo, ResourceState, StateVersion
from mlinfra.state.store import StateCorrupted, StateStore, StateUnavailable

__all__ = ["LockInfo", "ResourceState", "StateCorrupted", "StateStore", "StateUnavailable",
           "StateVersion", "open_store"]
