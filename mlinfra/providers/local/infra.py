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

    def create(self, change: Change, ctx: Context) -> Applied:
        folder = workspace_dir(ctx, change.name)
        (folder / "artifacts").mkdir(parents=True, exist_ok=True)
        return Applied({"path": str(folder)}, provider_id=str(folder))

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        folder = workspace_dir(ctx, state.name)
        if not (folder / "artifacts").is_dir():
            return Observed(False, f"its folder {_rel(folder)} was deleted")
        return Observed()

    def delete(self, state: ResourceState, ctx: Context) -> None:
        import shutil  # only to delete: a plan does not pay for it

        ctx.writer.write(ctx.store.empty_workspace)
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
    """A local folder; it must exist and be writable (mlinfra does not create it)."""

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        path = datastore_path(ctx, res.spec)
        if not path.is_dir():
            what = "is not a folder" if path.exists() else "does not exist"
            raise ProviderError(res.address, f"path {res.spec.get('path')} ({path}) {what}: "
                                "create it, or point the datastore at another folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ProviderError(res.address, f"path {path} is not writable")
        return {}

    def create(self, change: Change, ctx: Context) -> Applied:
        path = datastore_path(ctx, change.after or {})
        return Applied({"path": str(path)}, provider_id=str(path))

    def read(self, state: ResourceState, ctx: Context) -> Observed:
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
