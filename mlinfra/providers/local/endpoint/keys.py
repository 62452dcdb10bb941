"""An endpoint's keys: made here, shown once, kept only as SHA-256 hashes.

`auth: key` gives an endpoint two user keys (primary, secondary), made and shown once by
`mlinfra endpoints keys NAME` (or `--regenerate` for a new one), and mlinfra's own
operator key, a 0600 file its commands read (invoke, rollouts), which `--regenerate
operator` replaces. The state and the server's config hold hashes only; a server
accepts a key whose hash it holds.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from typing import Any

from mlinfra.providers.base import Context, ProviderError
from mlinfra.providers.local.endpoint.folders import EndpointFolder
from mlinfra.providers.local.endpoint.publish import change_live
from mlinfra.state.model import ResourceState

KEY_NAMES = ("primary", "secondary")


def new_key() -> str:
    return "mlk_" + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def operator_key(folder: EndpointFolder) -> str:
    """The key mlinfra's own commands use, made on first use."""
    path = folder.operator_key
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_key())
    return path.read_text().strip()


def accepted(outputs: dict[str, Any], folder: EndpointFolder) -> list[str]:
    """The hashes a server accepts for an endpoint whose state outputs are `outputs`:
    none with `auth: none`; else the user keys' and the operator key's."""
    if outputs.get("auth", "key") == "none":
        return []
    user = dict(outputs.get("key_hashes") or {})
    return [*user.values(), key_hash(operator_key(folder))]


def issue(ctx: Context, state: ResourceState, names: list[str]) -> dict[str, str]:
    """New keys in place of `names`, returned in clear this once: the server accepts them
    (and no longer the ones they replace) once every worker serves the new config, and
    the state records their hashes."""
    if state.outputs.get("auth", "key") == "none":
        raise ProviderError(state.address, "it has auth: none: it takes no keys")
    folder = EndpointFolder.of(ctx, state.name)
    made = {name: new_key() for name in names}
    outputs = {**state.outputs, "key_hashes": {
        **(state.outputs.get("key_hashes") or {}),
        **{name: key_hash(key) for name, key in made.items()}}}
    change_live(ctx, state, "regenerate-key", f"new {', '.join(names)} key",
                {"key_hashes": accepted(outputs, folder)},
                {"key_hashes": outputs["key_hashes"]}, record_first=True)
    return made


def rotate_operator(ctx: Context, state: ResourceState) -> None:
    """A new operator key in place of the old one, which the server no longer accepts
    once every worker serves the new config. The new key is kept beside the old until
    then, so a failure leaves mlinfra's commands with the key the server accepts."""
    if state.outputs.get("auth", "key") == "none":
        raise ProviderError(state.address, "it has auth: none: it takes no keys")
    folder = EndpointFolder.of(ctx, state.name)
    operator_key(folder)  # the folder and the file exist
    pending = folder.operator_key.with_name(folder.operator_key.name + ".new")
    pending.unlink(missing_ok=True)
    key = new_key()
    fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    user = list((state.outputs.get("key_hashes") or {}).values())
    change_live(ctx, state, "regenerate-key", "new operator key",
                {"key_hashes": [*user, key_hash(key)]}, {})
    os.replace(pending, folder.operator_key)
