"""Data on the local machine: a version is the content hash of a file or folder in a
datastore; content that fails the asset's expectations takes no version."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlinfra.data.checks import DataCheckFailed, DataChecks
from mlinfra.data.remote import ObjectData, datastore_location
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

    def _datastore(self, res: Resource, ctx: Context) -> Resource:
        store_name = res.spec.get("datastore") or default_datastore(ctx.config)
        store = ctx.config.get("Datastore", str(store_name))
        if store is None:
            raise ProviderError(res.address, "no datastore to read it from")
        return store

    def _remote(self, store: Resource, ctx: Context) -> ObjectData | None:
        location = datastore_location(store.name, store.spec)
        if location is None:
            return None
        return ObjectData(ctx.writer, location, datastore_path(ctx, store.spec))

    def locate(self, res: Resource, ctx: Context, fetch: bool = True,
               fresh: bool = False) -> tuple[str, Path]:
        """The sha256 of the asset's content and the local file holding it. On object
        storage the sha256 comes from the object's ETag when the state knows it, and
        the file is the local mirror, downloaded only with `fetch` (a plan reads no
        object it has seen). `fresh`: a local file is read from its bytes, whatever this
        machine remembers of it (a version about to be registered)."""
        store = self._datastore(res, ctx)
        rel = str(res.spec["path"])
        remote = self._remote(store, ctx)
        if remote is None:
            root = datastore_path(ctx, store.spec)
            path = root / rel
            _refuse_leaving(res.address, path, root)
            if not path.exists():
                raise ProviderError(res.address, f"{rel} not found in its datastore "
                                    f"({path})")
            return DataVersions(ctx.writer).content_sha256(path, fresh=fresh), path
        found = remote.stat(rel)
        if found is None:
            raise ProviderError(res.address, f"{rel} not found in its datastore "
                                f"({remote.url(rel)})")
        sha = remote.sha256(res.name, rel, found)
        if not fetch:
            return sha, remote.mirror / rel
        try:
            return sha, remote.fetch(rel, sha)
        except ValueError as err:
            raise ProviderError(res.address, str(err)) from None

    def path(self, res: Resource, ctx: Context) -> Path:
        """The local file holding the asset's current content (downloaded from object
        storage when it is there)."""
        return self.locate(res, ctx)[1]

    def object_metadata(self, res: Resource, ctx: Context) -> dict[str, Any]:
        """For an asset on object storage, its object's ETag (the fast key a later plan
        reads instead of the bytes); {} for a file."""
        remote = self._remote(self._datastore(res, ctx), ctx)
        found = remote.stat(str(res.spec["path"])) if remote else None
        return {"etag": found[0]} if found else {}

    def where(self, res: Resource, ctx: Context) -> str:
        """Where the asset lives, as its datastore names it: a path or a URL."""
        store = self._datastore(res, ctx)
        remote = self._remote(store, ctx)
        rel = str(res.spec["path"])
        return remote.url(rel) if remote else str(datastore_path(ctx, store.spec) / rel)

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        sha, _ = self.locate(res, ctx, fetch=False)
        versions = DataVersions(ctx.writer)
        if res.spec.get("expectations"):
            _refuse_known_failure(res, ctx, sha)
        version = versions.find(res.name, sha) or versions.next_version(res.name)
        return {"sha256": sha, "version": version}

    def create(self, change: Change, ctx: Context) -> Applied:
        after = change.after or {}
        res = ctx.config.get("Data", change.name)
        if res is None:
            raise ProviderError(change.address, "not in the configuration")
        sha, path = self.locate(res, ctx, fresh=True)
        versions = DataVersions(ctx.writer)
        if sha != after.get("sha256"):
            raise ProviderError(change.address, f"{self.where(res, ctx)} changed since the "
                                "plan was made: plan again")
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
        where = self.where(res, ctx)
        metadata.update(self.object_metadata(res, ctx))
        version = versions.register(change.name, sha, {**metadata, "path": where})
        return Applied({"version": version, "sha256": sha, "path": where, **metadata},
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


def _real(address: str, path: Path) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # a loop of links
        raise ProviderError(address, f"{path} is a loop of symbolic links") from None


def _refuse_leaving(address: str, path: Path, root: Path) -> None:
    """A Data path, and every link in a Data folder, stays inside its datastore, as a
    job's code stays inside the project: no file elsewhere on the machine is versioned
    (nor read by a job) through a link or `..`."""
    top = _real(address, root)

    def check(candidate: Path) -> None:
        real = _real(address, candidate)
        if real != top and top not in real.parents:
            how = (f"is a symbolic link to {os.readlink(candidate)}" if candidate.is_symlink()
                   else f"leads to {real}")
            raise ProviderError(address, f"{candidate} {how}, outside its datastore ({root}):"
                                " copy what it points at into the datastore")

    check(path)
    if path.is_dir():
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                entry = Path(folder) / name
                if entry.is_symlink():
                    check(entry)
