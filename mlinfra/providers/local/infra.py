"""Workspace, Compute and Datastore on the local machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlinfra.handler import datastore_path, workspace_dir
from mlinfra.plan.model import Change, Observed
from mlinfra.providers.base import Applied, BaseHandler, Context, ProviderError
from mlinfra.spec.model import Resource
from mlinfra.state.model import ResourceState


class WorkspaceHandler(BaseHandler):
    """A folder holding the artifact store and run folders (see `workspace_dir`); the
    registry's, runs' and data versions' tables are in the state store. Destroying the
    workspace destroys all it holds, files and rows alike, so an apply after it rebuilds
    everything, as on a new stack (the audit log keeps the history)."""

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        store = _object_store(ctx)
        if store is not None:
            store.check()  # unreachable, a missing bucket, refused credentials: said now
        return {}

    def create(self, change: Change, ctx: Context) -> Applied:
        folder = workspace_dir(ctx, change.name)
        store = _object_store(ctx)
        if store is not None:
            store.check(write=True)
        (folder / "artifacts").mkdir(parents=True, exist_ok=True)
        where = store.where if store is not None else str(folder)
        return Applied({"path": str(folder), "artifacts": where}, provider_id=where)

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        folder = workspace_dir(ctx, state.name)
        store = _object_store(ctx)
        if store is not None:
            store.check()  # a store that cannot be reached stops the plan, saying why
            (folder / "artifacts").mkdir(parents=True, exist_ok=True)  # this machine's cache
            return Observed()
        if not folder.is_dir():
            return Observed(False, f"its folder {_rel(folder)} was deleted")
        if not (folder / "artifacts").is_dir():
            return Observed(False, f"its artifact store {_rel(folder / 'artifacts')} was deleted")
        return Observed()

    def delete(self, state: ResourceState, ctx: Context) -> None:
        import shutil  # only to delete: a plan does not pay for it

        ctx.writer.write(ctx.store.empty_workspace)
        store = _object_store(ctx)
        if store is not None:
            store.remove_all()
        shutil.rmtree(workspace_dir(ctx, state.name), ignore_errors=True)


class ComputeHandler(BaseHandler):
    """Local compute: concurrency slots for jobs on this machine."""

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        kind = res.spec.get("type", "local")
        if kind != "local":
            raise ProviderError(res.address, f"type '{kind}' needs the {kind} provider; this "
                                f"stack ({ctx.config.stack.name}) uses the local provider")
        return {}

    def create(self, change: Change, ctx: Context) -> Applied:
        after = change.after or {}
        return Applied({"slots": after.get("max_concurrency", 2)})


class DatastoreHandler(BaseHandler):
    """A local folder; it must exist and be writable (mlinfra does not create it). On
    object storage, its bucket must exist and be reachable with its credentials."""

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        if res.spec.get("type", "local") != "local":
            from mlinfra.data.remote import datastore_location

            location = datastore_location(res.name, res.spec)
            assert location is not None
            fs = location.call("open", location.filesystem)
            location.call("reach", lambda: fs.ls(location.bucket, detail=False, refresh=True))
            return {}
        path = datastore_path(ctx, res.spec)
        if not path.is_dir():
            what = "is not a folder" if path.exists() else "does not exist"
            raise ProviderError(res.address, f"path {res.spec.get('path')} ({path}) {what}: "
                                "create it, or point the datastore at another folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ProviderError(res.address, f"path {path} is not writable")
        return {}

    def create(self, change: Change, ctx: Context) -> Applied:
        after = change.after or {}
        if after.get("type", "local") != "local":
            return Applied({"path": str(after["path"])}, provider_id=str(after["path"]))
        path = datastore_path(ctx, after)
        return Applied({"path": str(path)}, provider_id=str(path))

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        if state.attributes.get("type", "local") != "local":
            from mlinfra.data.remote import datastore_location

            location = datastore_location(state.name, state.attributes)
            assert location is not None
            fs = location.call("open", location.filesystem)
            if not location.call("reach", lambda: fs.exists(location.bucket)):
                return Observed(False, f"its bucket {location.bucket} no longer exists")
            return Observed()
        # This machine's folder, not the path of the machine that applied it: a
        # shared state is applied from clones in other places.
        path = datastore_path(ctx, state.attributes)
        if not path.is_dir():
            return Observed(False, f"its folder {path} no longer exists")
        return Observed()


def _rel(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def _object_store(ctx: Context) -> Any:
    """The workspace's artifact store when it is on object storage, else None."""
    from mlinfra.spec.storage import is_object_url

    artifacts = ctx.config.stack.artifacts
    if not (artifacts and is_object_url(artifacts)):
        return None
    from mlinfra.runs.jobs import artifact_store

    return artifact_store(ctx)
