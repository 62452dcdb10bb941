"""The event catalog: every event mlinfra announces, with the JSON Schema of its data.

Every event's `data` carries what a receiver needs to act without asking back: the
project and stack, the address of what changed, the versions involved, the commit when
one is known, the actor (a user, CI or a schedule) and the command that shows more.
`schemas/events/<type>.json` is `data_schema(type)` written out (`mlinfra schema`).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from mlinfra.spec.events import EVENT_TYPES, SCHEMA_BASE

BASE_ID = SCHEMA_BASE
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _p(description: str, kind: str | list[str], **kw: Any) -> dict[str, Any]:
    return {"description": description, "type": kind, **kw}


_VERSION = _p("A model version number.", "integer", minimum=1)
_RUN = _p("The run's id (mlinfra runs show ID).", "string")
_MODEL = _p("The model's name.", "string")
_ENDPOINT = _p("The endpoint's name.", "string")

# type -> (what it announces, its own data fields, which of them are required)
EVENTS: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "run.started": ("A training run started.",
                    {"run": _RUN, "job": _p("The job.", "string"),
                     "pipeline": _p("The pipeline, for a step.", ["string", "null"])},
                    ["run", "job"]),
    "run.completed": ("A training run finished with exit code 0.",
                      {"run": _RUN, "job": _p("The job.", "string"),
                       "duration_s": _p("How long it ran.", ["number", "null"])},
                      ["run", "job"]),
    "run.failed": ("A training run failed (non-zero exit, timeout or lost process).",
                   {"run": _RUN, "job": _p("The job.", "string"),
                    "error": _p("Why.", "string")}, ["run", "job", "error"]),
    "run.canceled": ("A training run was canceled.",
                     {"run": _RUN, "job": _p("The job.", "string")}, ["run", "job"]),
    "data.version_created": ("A data asset has a new version (its content changed).",
                             {"data": _p("The data asset.", "string"),
                              "version": _VERSION, "sha256": _p("Its content hash.",
                                                                "string")},
                             ["data", "version", "sha256"]),
    "data.expectations_failed": ("A data asset's content failed its expectations.",
                                 {"data": _p("The data asset.", "string"),
                                  "sha256": _p("The content checked.", "string"),
                                  "failed": _p("The failed expectations.", "array",
                                               items={"type": "string"})},
                                 ["data", "failed"]),
    "model.version_registered": ("A model version was registered.",
                                 {"model": _MODEL, "version": _VERSION,
                                  "run": _p("The run that made it.", ["string", "null"]),
                                  "sha256": _p("The model file's hash.", "string")},
                                 ["model", "version"]),
    "model.rejected": ("A promotion kept the champion: the candidate failed its gates or "
                       "lost the comparison.",
                       {"model": _MODEL, "candidate": _VERSION,
                        "champion": _p("The version kept.", ["integer", "null"]),
                        "outcome": _p("gates failed or rejected.", "string"),
                        "reason": _p("Why.", "string")},
                       ["model", "candidate", "outcome"]),
    "model.promoted": ("An alias moved (by a promotion, a rollback or by hand).",
                       {"model": _MODEL, "alias": _p("The alias.", "string"),
                        "version": _VERSION,
                        "previous": _p("The version it pointed at before.",
                                       ["integer", "null"]),
                        "reason": _p("Why it moved.", "string")},
                       ["model", "alias", "version"]),
    "model.archived": ("A model version was archived.",
                       {"model": _MODEL, "version": _VERSION}, ["model", "version"]),
    "rollout.step": ("A rollout moved a share of an endpoint's traffic to a new version.",
                     {"endpoint": _ENDPOINT, "deployment": _p("The canary.", "string"),
                      "share": _p("Percent of traffic.", "integer"),
                      "model": _p("The version rolled out (name:version).", "string")},
                     ["endpoint", "share"]),
    "rollout.completed": ("A rollout reached 100% and the new version serves.",
                          {"endpoint": _ENDPOINT,
                           "model": _p("The version now served.", "string")},
                          ["endpoint"]),
    "rollout.rolled_back": ("A rollout breached its thresholds: traffic and the alias "
                            "went back.",
                            {"endpoint": _ENDPOINT,
                             "model": _p("The version rolled back.", "string"),
                             "restored": _p("The version serving again.", "string"),
                             "reason": _p("Which threshold.", "string")},
                            ["endpoint", "reason"]),
    "endpoint.created": ("An endpoint was created.", {"endpoint": _ENDPOINT,
                                                      "url": _p("Its URL.", "string")},
                         ["endpoint"]),
    "endpoint.updated": ("An endpoint changed (deployments, traffic, settings).",
                         {"endpoint": _ENDPOINT, "url": _p("Its URL.", "string")},
                         ["endpoint"]),
    "endpoint.deleted": ("An endpoint was deleted.", {"endpoint": _ENDPOINT}, ["endpoint"]),
    "endpoint.unhealthy": ("An endpoint that the state holds does not answer its health "
                           "check.", {"endpoint": _ENDPOINT, "reason": _p("What failed.",
                                                                          "string")},
                           ["endpoint", "reason"]),
    "monitor.breached": ("A monitor's signals crossed their thresholds.",
                         {"monitor": _p("The monitor.", "string"),
                          "endpoint": _ENDPOINT,
                          "signals": _p("The signals that breached, with their values.",
                                        "object")},
                         ["monitor"]),
    "monitor.recovered": ("A monitor that had breached is within its thresholds again.",
                          {"monitor": _p("The monitor.", "string"), "endpoint": _ENDPOINT},
                          ["monitor"]),
    "apply.completed": ("An apply (or destroy) finished with every change made.",
                        {"added": _p("Resources created.", "integer"),
                         "changed": _p("Resources updated.", "integer"),
                         "replaced": _p("Resources replaced.", "integer"),
                         "destroyed": _p("Resources deleted.", "integer")},
                        ["added", "changed", "replaced", "destroyed"]),
    "apply.failed": ("An apply (or destroy) finished with changes that failed or were not "
                     "made.", {"failed": _p("address -> why.", "object"),
                               "skipped": _p("address -> why.", "object")},
                     ["failed"]),
    "schedule.fired": ("A schedule fired at its instant.",
                       {"schedule": _p("The schedule.", "string"),
                        "instant": _p("The instant it fired for (RFC 3339, UTC).",
                                      "string"),
                        "run": _p("The fired run's name (SCHEDULE-YYYYMMDDTHHMMSSZ).",
                                  "string"),
                        "what": _p("What it runs: {monitor|pipeline|apply: ...}.",
                                   "object")},
                       ["schedule", "instant", "run", "what"]),
}

TYPES: tuple[str, ...] = tuple(EVENTS)
assert TYPES == EVENT_TYPES, "the catalog and the names validate accepts differ"

_COMMON: dict[str, Any] = {
    "project": _p("The project.", "string"),
    "stack": _p("The stack.", "string"),
    "address": _p("What changed, as kind.name (e.g. model.fraud).", "string"),
    "commit": _p("The Git commit of the project, when known.", ["string", "null"]),
    "actor": {"description": "Who or what made the change.", "type": "object",
              "properties": {"kind": {"enum": ["user", "ci", "schedule"]},
                             "name": {"type": "string"}},
              "required": ["kind", "name"]},
    "see": _p("A command that shows more.", "string"),
}


def data_schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema of an event's `data`."""
    description, fields, required = EVENTS[event_type]
    return {"$schema": DRAFT, "$id": f"{BASE_ID}/{event_type}.json", "title": event_type,
            "description": description, "type": "object",
            "properties": {**_COMMON, **fields},
            "required": ["project", "stack", "address", "actor", "see", *required]}


def export(out: Path) -> list[Path]:
    """Write each event's data schema as `out/<type>.json`; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type in TYPES:
        path = out / f"{event_type}.json"
        path.write_text(json.dumps(data_schema(event_type), indent=2) + "\n")
        written.append(path)
    return written


def matching(pattern: str) -> list[str]:
    """The event types a webhook's `events:` entry names (`rollout.*`, `*`)."""
    return [t for t in TYPES if fnmatch.fnmatchcase(t, pattern)]


def wanted(patterns: list[str], event_type: str) -> bool:
    return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)
