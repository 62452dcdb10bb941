"""Sensitive values: `${secret.NAME}` (read from the environment) and `${var.NAME}` of a
variable declared `sensitive: true` (set by the stack).

Both stay references in a resource's spec; they are allowed only in fields whose value
goes to a process (a job's command, params and env, an environment's requirements and
env), never in one that is recorded (a path, a description). The process that uses a
value gets it through an environment variable it expands itself: the job's shell
(`"${MLINFRA_SECRET_NAME}"`), uv reading a requirements file. Plans and state hold a
salted scrypt hash of the value instead, so a change is detected and nothing is shown.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from typing import Any

from mlinfra.errors import MlinfraError
from mlinfra.spec.model import INTERPOLATION

SECRET_PREFIX = "sensitive:"
# NOTE: every plan hashes every sensitive value again (with the salt its state holds),
# so the cost is paid per plan: N=2**14, r=8 takes about 30 ms and 16 MiB per value on
# one core of a 2020s laptop. A 300,000-word list then costs about 2.5 hours per value
# instead of well under a second for a keyed SHA-256 with its key beside it.
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_SALT_BYTES = 16
_HASHED = re.compile(r"sensitive:scrypt\$([0-9a-f]{32})\$[0-9a-f]{64}")

# Where a sensitive value may be used, per kind: `*` is any key or list index.
ALLOWED_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Job": (("command",), ("params", "*"), ("env", "*")),
    "Pipeline": (("steps", "*", "params", "*"),),
    "Environment": (("requirements", "*"), ("env", "*")),
    "Webhook": (("url",), ("secret",)),
    "Datastore": (("credentials", "*"),),
}
ALLOWED_TEXT = ("command, params, env, requirements, a datastore's credentials and a "
                "webhook's url and secret")


class MissingSecret(MlinfraError):
    """A `${secret.NAME}` whose environment variable is not set."""

    def __init__(self, name: str) -> None:
        super().__init__(f"secret '{name}' is not set: export {name}=... before planning")
        self.name = name


def allowed(kind: str, path: tuple[str | int, ...]) -> bool:
    """Whether a sensitive value may be used at `path` of a `kind` document."""
    return any(len(pattern) == len(path) and all(p in ("*", str(k)) for p, k in
                                                 zip(pattern, path, strict=True))
               for pattern in ALLOWED_FIELDS.get(kind, ()))


def references(text: str) -> Iterator[tuple[str, str]]:
    """(namespace, name) of each sensitive reference in `text`. After loading, every
    `${var.X}` left in a spec is one: the others were filled in."""
    for match in INTERPOLATION.finditer(text):
        if match.group(1) in ("secret", "var"):
            yield match.group(1), match.group(2)[1:]


def holds(value: Any) -> bool:
    """Whether `value` (a string, or any nesting of lists and mappings) refers to a
    sensitive value."""
    if isinstance(value, dict):
        return any(holds(v) for v in value.values())
    if isinstance(value, list):
        return any(holds(v) for v in value)
    return isinstance(value, str) and "${" in value and next(references(value), None) is not None


def env_name(namespace: str, name: str) -> str:
    """The environment variable a process reads the value from. Upper case, as uv
    expands only `${UPPER_CASE}` names in requirements files; a name that is not already
    upper case gets a short hash of itself, so two names never share a variable."""
    prefix = "MLINFRA_SECRET_" if namespace == "secret" else "MLINFRA_VAR_"
    if re.fullmatch(r"[A-Z0-9_]+", name):
        return prefix + name
    plain = re.sub(r"[^A-Za-z0-9_]", "_", name).upper()
    return f"{prefix}{plain}_{hashlib.sha256(name.encode()).hexdigest()[:8].upper()}"


def value_of(namespace: str, name: str, variables: Mapping[str, Any]) -> str:
    if namespace == "var":
        return str(variables[name])
    if name not in os.environ:
        raise MissingSecret(name)
    return os.environ[name]


def resolve(value: Any, variables: Mapping[str, Any]) -> Any:
    """`value` with every sensitive reference replaced by its value: only for what is
    handed to a process, never for what is kept."""
    if isinstance(value, dict):
        return {k: resolve(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, variables) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def fill(match: re.Match[str]) -> str:
        if match.group(1) in ("secret", "var"):
            return value_of(match.group(1), match.group(2)[1:], variables)
        return match.group(0)

    return INTERPOLATION.sub(fill, value)


def all_references(value: Any) -> Iterator[tuple[str, str]]:
    """(namespace, name) of each sensitive reference anywhere in `value` (a string, or
    any nesting of lists and mappings)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from all_references(item)
    elif isinstance(value, list):
        for item in value:
            yield from all_references(item)
    elif isinstance(value, str) and "${" in value:
        yield from references(value)


def environment(values: Any, variables: Mapping[str, Any]) -> dict[str, str]:
    """The variables a process needs to expand the references in `values`."""
    return {env_name(namespace, name): value_of(namespace, name, variables)
            for namespace, name in all_references(values)}


def secret_names(values: Any) -> set[str]:
    """The environment variables that `${secret.NAME}` references in `values` read."""
    return {name for namespace, name in all_references(values) if namespace == "secret"}


def as_env_references(text: str) -> str:
    """`text` with each sensitive reference as `${MLINFRA_...}`, for a tool that expands
    environment variables itself (uv in a requirements file)."""
    return INTERPOLATION.sub(
        lambda m: "${" + env_name(m.group(1), m.group(2)[1:]) + "}"
        if m.group(1) in ("secret", "var") else m.group(0), text)


def shell_word(text: str) -> str:
    """`text` as one shell word: literal parts quoted, sensitive references expanded by
    the shell from the environment (`"${MLINFRA_SECRET_NAME}"`)."""
    parts, end = [], 0
    for match in INTERPOLATION.finditer(text):
        if match.group(1) not in ("secret", "var"):
            continue
        if match.start() > end:
            parts.append(shlex.quote(text[end:match.start()]))
        parts.append('"${' + env_name(match.group(1), match.group(2)[1:]) + '}"')
        end = match.end()
    if end < len(text) or not parts:
        parts.append(shlex.quote(text[end:]))
    return "".join(parts)


def redact(text: str, values: Mapping[str, str]) -> str:
    """`text` without any of `values` (a tool's message may quote what it was given).
    Values under 4 characters are left: replacing them would blank unrelated text."""
    for value in sorted(values.values(), key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, "(sensitive)")
    return text


def salt_of(hashed: Any) -> bytes | None:
    """The salt of a stored hash, so the same value hashes to the same string again."""
    match = _HASHED.fullmatch(hashed) if isinstance(hashed, str) else None
    return bytes.fromhex(match.group(1)) if match else None


def fingerprint(value: str, salt: bytes | None = None) -> str:
    """`sensitive:scrypt$SALT$HASH` of a value: a new random salt unless given."""
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    hashed = hashlib.scrypt(value.encode(), salt=salt, **SCRYPT).hex()
    return f"{SECRET_PREFIX}scrypt${salt.hex()}${hashed}"
