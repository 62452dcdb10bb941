"""A server's models fetched from the artifact store when it starts (docker and
kubernetes with `artifacts:` on object storage), so a model's size is bounded by
nothing that carries it to the pod.

A deployment whose config has `url` (the object of its model's blob, named by its
sha256) is downloaded to `path` through fsspec (s3fs, gcsfs or adlfs in the server's
image; credentials from the SDK's own variables or the pod's identity), to a temporary
file first, hashed, and renamed into place only when its sha256 is the one the config
names: a server never loads a model other than the one mlinfra rendered.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

_CHUNK = 1 << 20


class FetchFailed(Exception):
    """A model could not be fetched whole, or is not the one its config names."""


def fetch_models(config: dict[str, Any], attempts: int = 5) -> list[str]:
    """Fetch every deployment's model that has a `url`; returns their paths."""
    fetched = []
    for name, deployment in (config.get("deployments") or {}).items():
        url = deployment.get("url")
        if not url:
            continue
        path = str(deployment["path"])
        if os.path.isfile(path) and _sha256(path) == deployment["sha256"]:
            fetched.append(path)
            continue
        for attempt in range(1, attempts + 1):
            try:
                _fetch(url, path, str(deployment["sha256"]))
                break
            except FetchFailed:
                raise
            except Exception as err:  # the SDKs raise many kinds; each is retried
                if attempt == attempts:
                    raise FetchFailed(f"deployment {name}: {url} could not be fetched after "
                                      f"{attempts} attempts: {type(err).__name__}: "
                                      f"{str(err).splitlines()[0] if str(err) else ''}"
                                      ) from None
                time.sleep(min(2.0 ** attempt, 20.0))
        fetched.append(path)
    return fetched


def _fetch(url: str, path: str, sha256: str) -> None:
    import fsspec

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.part"
    digest = hashlib.sha256()
    try:
        with fsspec.open(url, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != sha256:
            raise FetchFailed(f"{url} has sha256 {digest.hexdigest()[:12]}, not "
                              f"{sha256[:12]}: the object was changed outside mlinfra; "
                              "refusing to serve it")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
