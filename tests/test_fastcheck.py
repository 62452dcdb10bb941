"""The compiled schema check answers exactly as jsonschema does."""

from __future__ import annotations

import copy
import random
from typing import Any

import jsonschema
import pytest
import yaml

from mlinfra.spec.fastcheck import compile_schema
from mlinfra.spec.schemas import SCHEMAS
from tests.conftest import QUICKSTART

SAMPLES: list[Any] = [None, True, False, 0, 1, -1, 1.0, 2.5, 101, "", "x", "fraud:3",
                      "Fraud", "30m", "local", [], ["a"], ["a", "a"], [1, True], {},
                      {"a": 1}, {"job": "j", "output": "o"}, {"path": "p"}, 60]


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(QUICKSTART.rglob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    return docs


def _paths(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*path, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            out += _paths(value, (*path, index))
    return out


def _mutate(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_paths(doc)[1:])
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        action = rng.random()
        if action < 0.2 and isinstance(parent, dict):
            del parent[path[-1]]
        elif action < 0.3 and isinstance(parent, dict):
            parent[rng.choice(["extra", "tags", "mirror", "min", "job", "path"])] = (
                copy.deepcopy(rng.choice(SAMPLES)))
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(SAMPLES))
        if not _paths(doc)[1:]:
            break
    return doc


@pytest.mark.parametrize("seed", range(4))
def test_compiled_check_agrees_with_jsonschema(seed: int) -> None:
    rng = random.Random(seed)
    docs = _documents()
    disagreements: list[str] = []
    invalid = 0
    for _ in range(1500):
        original = rng.choice(docs)
        kind = original["kind"]
        doc = _mutate(original, rng)
        expected = jsonschema.Draft202012Validator(SCHEMAS[kind]).is_valid(doc)
        invalid += not expected
        if compile_schema(SCHEMAS[kind])(doc) != expected:
            disagreements.append(f"{kind}: jsonschema says valid={expected}: {doc}")
    assert not disagreements, disagreements[:3]
    assert 300 < invalid < 1400, invalid  # the mutations exercise both answers


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(ValueError, match="patternProperties"):
        compile_schema({"type": "object", "patternProperties": {"^x": {}}})


def test_json_equality_rules() -> None:
    unique = compile_schema({"uniqueItems": True})
    assert unique([1, True]) and not unique([1, 1.0]) and not unique([{"a": [1]}, {"a": [1]}])
    assert not compile_schema({"enum": [1]})(True)
    assert compile_schema({"type": "integer"})(2.0)
    assert not compile_schema({"type": "integer"})(True)
