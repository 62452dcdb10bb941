"""Models by name and version: content, signature, lineage, metrics, tags, aliases."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from mlinfra.errors import MlinfraError
from mlinfra.state.cloudevents import with_see
from mlinfra.state.store import Cursor, row_json, upsert
from mlinfra.state.work import Event, Writer

_COLUMNS = ("name", "version", "sha256", "format", "signature", "run_id", "lineage",
            "metrics", "tags", "created_at", "archived")
_JSON = ("signature", "lineage", "metrics", "tags")


# A version whose promotion gates failed is tagged so; it is never `latest`.
GATES_TAG = "mlinfra.gates"


class RegistryError(MlinfraError):
    pass


@dataclass
class ModelVersion:
    """Invariant: (name, sha256) is unique, so the same content is never two versions."""

    name: str
    version: int
    sha256: str
    format: str
    signature: dict[str, Any]
    run_id: str | None
    lineage: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    archived: int = 0

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class ModelRegistry:
    """Reads the registry; writes through `writer`: a unit of work during apply (the
    change commits with the resource's), or a store (written at once)."""

    def __init__(self, writer: Writer) -> None:
        self.writer, self.store = writer, writer.store

    def _select(self, where: str, args: tuple[Any, ...]) -> list[ModelVersion]:
        rows = self.store.query(f"SELECT {', '.join(_COLUMNS)} FROM models WHERE {where} "
                                "ORDER BY name, version", args)
        out = []
        for row in rows:
            values = dict(zip(_COLUMNS, row, strict=True))
            for key in _JSON:
                values[key] = row_json(values[key], f"model {row[0]}:{row[1]} {key}", dict)
            out.append(ModelVersion(**values))
        return out

    def register(self, name: str, sha256: str, fmt: str, signature: dict[str, Any],
                 run_id: str | None, lineage: dict[str, Any], metrics: dict[str, float],
                 tags: dict[str, Any]) -> tuple[ModelVersion, bool]:
        """The version of this content: (existing, False) or (new N+1, True). A
        number once given is never given again, even after a destroy."""
        number, created = self.writer.number("models", name, sha256)
        if not created:
            found = self.get(name, number)
            if found is not None:
                return found, False
        version = ModelVersion(name, number, sha256, fmt, dict(signature), run_id,
                               dict(lineage), dict(metrics), dict(tags), time.time(), 0)

        def insert(cur: Cursor) -> None:
            cur.execute(f"INSERT INTO models ({', '.join(_COLUMNS)}) VALUES "
                        f"({', '.join('?' * len(_COLUMNS))}) ON CONFLICT DO NOTHING",
                        (name, number, sha256, fmt, json.dumps(signature), run_id,
                         json.dumps(lineage), json.dumps(metrics), json.dumps(tags),
                         version.created_at, 0))
            self.store.keep_number(cur, "models", name, number)

        self.writer.write(insert)
        self.writer.emit("model.version_registered", f"model.{name}", with_see(
            {"model": name, "version": number, "run": run_id, "sha256": sha256},
            f"mlinfra models show {name}:{number}"))
        return version, created

    def set_metrics(self, name: str, version: int, metrics: dict[str, float]) -> None:
        self.writer.write(lambda cur: cur.execute(
            "UPDATE models SET metrics=? WHERE name=? AND version=?",
            (json.dumps(metrics), name, version)))

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        return self._select("name=?", (name,)) if name else self._select("1=1", ())

    def get(self, name: str, version: int) -> ModelVersion | None:
        found = self._select("name=? AND version=?", (name, version))
        return found[0] if found else None

    def latest(self, name: str) -> ModelVersion | None:
        """The newest version that is neither archived nor failed its gates."""
        found = [v for v in self.versions(name)
                 if not v.archived and v.tags.get(GATES_TAG) != "failed"]
        return found[-1] if found else None

    def aliases(self, name: str) -> dict[str, int]:
        return {alias: version for alias, version in self.store.query(
            "SELECT alias, version FROM aliases WHERE name=? ORDER BY alias", (name,))}

    def alias_reason(self, name: str, alias: str) -> str:
        """Why the alias names the version it names now (the reason of its last move)."""
        rows = self.store.query("SELECT reason FROM aliases WHERE name=? AND alias=?",
                                (name, alias))
        return str(rows[0][0]) if rows else ""

    def alias_nowhere(self, name: str, alias: str) -> str:
        """That `name@alias` points nowhere, and the whole way to set it: `models alias`
        points it at a registered version, so a model with none yet is registered first,
        by applying its Model (a reference names a Model the project declares: validate
        checks it)."""
        ref = f"{name}@{alias}"
        set_it = f"mlinfra models alias {ref} VERSION"
        if self.versions(name):
            return f"alias {ref} points nowhere: set it with {set_it}"
        return (f"alias {ref} points nowhere, and model {name} has no version yet: register "
                f"it first with mlinfra apply --target model.{name}, then set the alias with "
                f"{set_it}")

    def resolve(self, name: str, version: int | None = None,
                alias: str | None = None) -> ModelVersion:
        """`fraud`, `fraud:3` or `fraud@champion` to a version; RegistryError if none."""
        if alias is not None:
            target = self.aliases(name).get(alias)
            if target is None:
                raise RegistryError(self.alias_nowhere(name, alias))
            version = target
        found = self.get(name, version) if version is not None else self.latest(name)
        if found is None:
            what = f"{name}:{version}" if version is not None else name
            raise RegistryError(f"model {what} is not registered")
        return found

    def set_alias(self, name: str, alias: str, version: int, reason: str = "") -> None:
        if self.get(name, version) is None:
            known = ", ".join(str(v.version) for v in self.versions(name)) or "none"
            raise RegistryError(f"model {name} has no version {version} (versions: {known})")
        at = time.time()

        def move(cur: Cursor) -> None:
            before = cur.execute("SELECT version FROM aliases WHERE name=? AND alias=?",
                                 (name, alias)).fetchone()
            cur.execute(upsert("aliases", ("name", "alias", "version", "updated_at",
                                           "reason"), ("name", "alias")),
                        (name, alias, version, at, reason))
            was = before[0] if before is not None else None
            self.store.advance(cur, f"model.{name}", "alias", json.dumps(
                {"model": name, "alias": alias, "from": was, "to": version,
                 "reason": reason[:1500]}, sort_keys=True))
            # Every alias move is announced, with the version it replaced (read here,
            # in the transaction that moves it).
            self.store.record_events(cur, [Event("model.promoted", f"model.{name}", with_see(
                {"model": name, "alias": alias, "version": version,
                 "previous": int(was) if was is not None else None, "reason": reason},
                f"mlinfra models show {name}@{alias}"), at)])

        self.writer.write(move)

    def set_tags(self, name: str, version: int, tags: dict[str, Any]) -> None:
        found = self.get(name, version)
        if found is None:
            raise RegistryError(f"model {name} has no version {version}")

        def tag(cur: Cursor) -> None:  # merged with the tags as they are at commit
            row = cur.execute("SELECT tags FROM models WHERE name=? AND version=?",
                              (name, version)).fetchone()
            have = row_json(row[0], f"model {name}:{version}") if row is not None else {}
            cur.execute("UPDATE models SET tags=? WHERE name=? AND version=?",
                        (json.dumps({**have, **tags}), name, version))
            self.store.advance(cur, f"model.{name}", "tag",
                               f"{found.ref}: " + json.dumps(tags, sort_keys=True))

        self.writer.write(tag)

    def archive(self, name: str, version: int, used_by: list[str]) -> None:
        """Hide a version from `latest`; refused while an endpoint serves it."""
        if used_by:
            raise RegistryError(f"{name}:{version} is used by {', '.join(used_by)}: change "
                                "those deployments first")
        if self.get(name, version) is None:
            raise RegistryError(f"model {name} has no version {version}")

        def archive(cur: Cursor) -> None:
            cur.execute("UPDATE models SET archived=1 WHERE name=? AND version=?",
                        (name, version))
            self.store.advance(cur, f"model.{name}", "archive", f"{name}:{version}")

        self.writer.write(archive)
        self.writer.emit("model.archived", f"model.{name}", with_see(
            {"model": name, "version": version}, f"mlinfra models list {name}"))
