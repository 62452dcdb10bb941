"""Data on object storage: a Data asset whose datastore is `type: s3 | gcs | azure_blob`
is one object under the datastore's prefix.

Its identity is the sha256 of its bytes, as for a file. The object's ETag (with its URL
and size) is the fast key: each data version registered from an object records them,
so a plan reads one HEAD per object and downloads nothing for content the registry
already has (on any machine sharing the state). A changed object has another ETag: it
is downloaded and hashed, and its new content is a new version, as a changed file is.
Reading it (apply, a job's input, the expectations) uses a local mirror of the object,
downloaded to a temporary file, hashed, and renamed into place.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from mlinfra.data.objects import ObjectLocation, location_of
from mlinfra.data.versions import DataVersions

_CHUNK = 1 << 20


def datastore_location(name: str, spec: dict[str, Any]) -> ObjectLocation | None:
    """The object storage a datastore names, or None for a folder."""
    if spec.get("type", "local") == "local":
        return None
    return location_of(str(spec["path"]), spec, f"datastore/{name}")


class ObjectData:
    """One datastore's objects, read through `mirror` (a folder of this machine)."""

    def __init__(self, store: Any, location: ObjectLocation, mirror: Path) -> None:
        self.store, self.location, self.mirror = store, location, mirror

    def url(self, rel: str) -> str:
        return self.location.url_of(self.location.key(rel))

    def stat(self, rel: str) -> tuple[str, int] | None:
        """(ETag, size) of the object, or None when there is none."""
        loc = self.location
        fs = loc.call("open", loc.filesystem)
        key = loc.key(rel)
        try:
            info = loc.call("read", lambda: fs.info(key, refresh=True),
                            passing=(FileNotFoundError,))
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            raise FileNotFoundError(f"{self.url(rel)} is a prefix, not an object: a Data on "
                                    "object storage is one object")
        tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or ""
        return str(tag).strip('"'), int(info.get("size") or 0)

    def sha256(self, name: str, rel: str, found: tuple[str, int]) -> str:
        """The object's sha256: that of the version of asset `name` registered from this
        object with this ETag and size, or its bytes hashed now (downloaded into the
        mirror)."""
        etag, size = found
        url = self.url(rel)
        for version in reversed(DataVersions(self.store).list(name)):
            meta = version.metadata
            if (meta.get("path") == url and meta.get("etag") == etag
                    and meta.get("bytes") == size):
                return version.sha256
        return self._download(rel)

    def fetch(self, rel: str, sha: str) -> Path:
        """The local mirror of the object, holding the content `sha` (downloaded again
        when the mirror holds other bytes)."""
        mirror = self.mirror / rel
        if mirror.is_file() and _sha256(mirror) == sha:
            return mirror
        got = self._download(rel)
        if got != sha:
            raise ValueError(f"{self.url(rel)} changed while it was read (sha256 {got[:12]}, "
                             f"expected {sha[:12]}): plan again")
        return mirror

    def _download(self, rel: str) -> str:
        """Download the object into the mirror (a temporary file, renamed into place
        whole); returns its sha256."""
        loc = self.location
        fs = loc.call("open", loc.filesystem)
        target = self.mirror / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{os.urandom(6).hex()}.part"

        def copy() -> str:
            digest = hashlib.sha256()
            with fs.open(loc.key(rel), "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
            return digest.hexdigest()

        try:
            sha = loc.call("download from", copy)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return sha


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
