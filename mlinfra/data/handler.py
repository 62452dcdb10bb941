"""Data on the local machine: a version is the content hash of a file or folder in a
datastore; content that fails the asset's expectations takes no version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlinfra.data.checks import DataCheckFailed, DataChecks
from mlinfra.data.versions import DataVersions, describe
from mlinfra.errors import MlinfraError
from mlinfra.graph import default_datastore
from mlinfra.handler import Applied, BaseHandler, Context, ProviderError, datastore_path
from mlinfra.plan.model import Change, Observed
from mlinfra.spec.model import Resource
from mlinfra.state.model import ResourceState


class DataHandler(BaseHandler):
    """A version is the sha256 of the file or folder; new content that passes its
    expectations takes the next number."""

    def path(self, res: Resource, ctx: Context) -> Path:
        store_name = res.spec.get("datastore") or default_datastore(ctx.config)
        store = ctx.config.get("Datastore", str(store_name))
        if store is None:
            raise ProviderError(res.address, "no datastore to read it from")
        return datastore_path(ctx, store.spec) / str(res.spec["path"])

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        path = self.path(res, ctx)
        if not path.exists():
            raise ProviderError(res.address, f"{res.spec['path']} not found in its datastore "
                                f"({path})")
        versions = DataVersions(ctx.writer)
        sha = versions.content_sha256(path)
        if res.spec.get("expectations"):
            _refuse_known_failure(res, ctx, sha)
        version = versions.find(res.name, sha) or versions.next_version(res.name)
        return {"sha256": sha, "version": version}

    def create(self, change: Change, ctx: Context) -> Applied:
        after = change.after or {}
        res = ctx.config.get("Data", change.name)
        if res is None:
            raise ProviderError(change.address, "not in the configuration")
        path = self.path(res, ctx)
        versions = DataVersions(ctx.writer)
        sha = versions.content_sha256(path, fresh=True)
        if sha != after.get("sha256"):
            raise ProviderError(change.address, f"{path} changed since the plan was made: "
                                "plan again")
        fmt = str(res.spec.get("format", "csv"))
        expectations = res.spec.get("expectations") or []
        if expectations:
            # Checked before a number is taken: content that fails is recorded as failed
            # (and not checked again), never as the next version.
            try:
                DataChecks(ctx.store).require(change.name, sha, path, fmt, expectations,
                                              f"{change.name} (sha256 {sha[:12]})")
            except DataCheckFailed as err:
                raise ProviderError(change.address, f"{err.message}\nno version registered"
                                    ": fix the data or its expectations, then apply again"
                                    ) from err
            except MlinfraError as err:
                raise ProviderError(change.address, err.message) from err
        metadata = describe(path, fmt)
        version = versions.register(change.name, sha, {**metadata, "path": str(path)})
        return Applied({"version": version, "sha256": sha, "path": str(path), **metadata},
                       provider_id=f"{change.name}:{version}")

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        version = state.outputs.get("version")
        if version is not None and DataVersions(ctx.writer).get(state.name, version) is None:
            return Observed(False, f"version {version} is missing from the registry")
        return Observed()


def _refuse_known_failure(res: Resource, ctx: Context, sha: str) -> None:
    """Content whose expectations already failed fails again: the plan says so now
    rather than promise a version the apply will refuse."""
    from mlinfra.data.checks import DataCheckFailed, DataChecks

    found = DataChecks(ctx.store).get(res.name, sha, str(res.spec.get("format", "csv")),
                                      list(res.spec["expectations"]))
    if found is not None and not found.passed:
        raise ProviderError(res.address, DataCheckFailed(
            f"{res.name} (sha256 {sha[:12]}, checked before)", found.failures).message
            + "\nfix the data, or its expectations")
