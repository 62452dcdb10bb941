"""Which backend a stack's `state:` names: a path is a SQLite file, a postgresql://
URL a schema on a PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

from mlinfra.errors import MlinfraError
from mlinfra.state.store import StateStore

POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_url(location: str) -> bool:
    return "://" in location


def location_problem(location: str) -> str | None:
    """What is wrong with a stack's `state:` as written (`validate` asks, before any
    secret is filled in), or None."""
    if not is_url(location):
        return None
    scheme = location.split("://", 1)[0]
    if scheme not in POSTGRES_SCHEMES:
        return (f"state backend '{scheme}' is not supported: use a path to a SQLite file "
                "or a postgresql:// URL")
    from mlinfra.state.postgres import PostgresLocation

    try:
        PostgresLocation(location, "project", "stack")
    except MlinfraError as err:
        return err.message
    return None


def open_store(location: str, *, project: str, stack: str, command: str,
               readonly: bool, new_state: bool = False) -> StateStore:
    """The state at `location` (a SQLite file's path, or a database URL with its
    secrets resolved), for writing or only for reading. `new_state`: a SQLite file that
    is gone while its backup is still there starts over (otherwise that is refused)."""
    if is_url(location):
        scheme = location.split("://", 1)[0]
        if scheme not in POSTGRES_SCHEMES:
            raise MlinfraError(str(location_problem(location)))
        from mlinfra.state.postgres import open_postgres

        return open_postgres(location, project=project, stack=stack, command=command,
                             readonly=readonly)
    from mlinfra.state.sqlite import SqliteStore

    return SqliteStore(Path(location), command=command, readonly=readonly,
                       new_state=new_state)
