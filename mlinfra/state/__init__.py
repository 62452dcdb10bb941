"""State: what mlinfra created, as it last saw it, and who may change it now.

`model` says what a state is, `sqlite` how it is stored (one transaction per change,
serial + lineage, a journal of pending operations, an audit log), `lock` who may
write. The model registry, runs and data versions keep their tables in the same file.
"""

from mlinfra.state.model import LockInfo, ResourceState, StateVersion
from mlinfra.state.sqlite import SqliteStore, StateCorrupted

__all__ = ["LockInfo", "ResourceState", "SqliteStore", "StateCorrupted", "StateVersion"]
