"""A fast yes/no check of a document against a schema, compiled to closures.

jsonschema stays the authority: it writes every error message. But walking a schema
generically costs about as much as parsing the YAML, so each kind's schema is compiled
once into plain Python checks, and jsonschema runs only on documents that fail them.

Every compiled keyword is exact (the same answer as jsonschema), which `oneOf` relies
on. It knows exactly the keywords mlinfra's schemas use and refuses to compile any
other, so a new keyword cannot be silently skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any

Check = Callable[[Any], bool]

# Keywords that say nothing about validity.
_ANNOTATIONS = {"$schema", "$id", "title", "description", "default", "x-mlinfra-replace"}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_TYPES: dict[str, Check] = {
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": _is_number,
    "integer": lambda v: _is_number(v) and (isinstance(v, int) or float(v).is_integer()),
}


def _same(a: Any, b: Any) -> bool:
    """JSON equality for the scalars used in enum/const (true is not 1)."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) \
        else a == b


def compile_schema(schema: dict[str, Any]) -> Check:
    """Compile `schema` into a function returning True only for valid instances."""
    unknown = set(schema) - _ANNOTATIONS - set(_COMPILERS)
    if unknown:
        raise ValueError(f"fastcheck cannot compile keywords {sorted(unknown)}")
    maybe = [_COMPILERS[key](schema[key], schema) for key in schema if key in _COMPILERS]
    checks = [c for c in maybe if c is not None]
    if not checks:
        return lambda _: True
    if len(checks) == 1:
        return checks[0]

    def every(value: Any) -> bool:
        # NOTE: a plain loop: all() over a generator measured slower on this hot path.
        for check in checks:  # noqa: SIM110
            if not check(value):
                return False
        return True

    return every


_PLAIN: dict[str, type] = {"string": str, "object": dict, "array": list, "null": type(None)}


def _type(types: Any, _: dict[str, Any]) -> Check:
    names = [types] if isinstance(types, str) else list(types)
    if all(name in _PLAIN for name in names):
        plain = tuple(_PLAIN[name] for name in names)
        return lambda v: isinstance(v, plain)
    tests = [_TYPES[name] for name in names]
    return lambda v: any(test(v) for test in tests)


def _properties(props: dict[str, Any], schema: dict[str, Any]) -> Check:
    compiled = {name: compile_schema(sub) for name, sub in props.items()}
    extra = schema.get("additionalProperties", True)
    extra_check: Check | None = None
    if isinstance(extra, dict):
        extra_check = compile_schema(extra)
    closed = extra is False

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        for key, item in value.items():
            sub = compiled.get(key)
            if sub is not None:
                if not sub(item):
                    return False
            elif closed or (extra_check is not None and not extra_check(item)):
                return False
        return True

    return check


def _additional(extra: Any, schema: dict[str, Any]) -> Check | None:
    if "properties" in schema:
        return None  # handled together with properties
    if extra is False:
        return lambda v: not isinstance(v, dict) or not v
    sub = compile_schema(extra) if isinstance(extra, dict) else None
    if sub is None:
        return None
    return lambda v: not isinstance(v, dict) or all(sub(item) for item in v.values())


def _required(names: list[str], _: dict[str, Any]) -> Check:
    return lambda v: not isinstance(v, dict) or all(name in v for name in names)


def _enum(options: list[Any], _: dict[str, Any]) -> Check:
    return lambda v: any(_same(v, option) for option in options)


def _const(expected: Any, _: dict[str, Any]) -> Check:
    return lambda v: _same(v, expected)


@cache
def ecma_regex(pattern: str) -> re.Pattern[str]:
    """A JSON Schema `pattern` compiled as ECMA-262 reads it: `$` is the end of the
    string, never the place before a final newline as in Python (`"ep\\n"` is not a
    name)."""
    out, in_class, escaped = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        elif char == "$" and not in_class:
            out.append(r"\Z")
            continue
        out.append(char)
    return re.compile("".join(out))


def _pattern(pattern: str, _: dict[str, Any]) -> Check:
    search = ecma_regex(pattern).search
    return lambda v: not isinstance(v, str) or search(v) is not None


def _bound(op: Callable[[Any, Any], bool]) -> Callable[[Any, dict[str, Any]], Check]:
    def make(limit: Any, _: dict[str, Any]) -> Check:
        return lambda v: not _is_number(v) or op(v, limit)
    return make


def _size(kind: type[str | list[Any] | dict[str, Any]],
          op: Callable[[int, int], bool]) -> Callable[[Any, dict[str, Any]], Check]:
    def make(limit: int, _: dict[str, Any]) -> Check:
        return lambda v: not isinstance(v, kind) or op(len(v), limit)
    return make


def _items(items: dict[str, Any], _: dict[str, Any]) -> Check:
    sub = compile_schema(items)
    return lambda v: not isinstance(v, list) or all(sub(item) for item in v)


def _json_key(value: Any) -> Any:
    """A hashable key equal for JSON-equal values (1 == 1.0, but true != 1)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, dict):
        return ("object", frozenset((k, _json_key(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", tuple(_json_key(v) for v in value))
    return ("scalar", value)


def _unique(flag: bool, _: dict[str, Any]) -> Check | None:
    if not flag:
        return None
    return lambda v: not isinstance(v, list) or len({_json_key(i) for i in v}) == len(v)


def _property_names(names: dict[str, Any], _: dict[str, Any]) -> Check:
    sub = compile_schema(names)
    return lambda v: not isinstance(v, dict) or all(sub(key) for key in v)


def _one_of(options: list[dict[str, Any]], _: dict[str, Any]) -> Check:
    subs = [compile_schema(option) for option in options]
    return lambda v: sum(1 for sub in subs if sub(v)) == 1


def _any_of(options: list[dict[str, Any]], _: dict[str, Any]) -> Check:
    subs = [compile_schema(option) for option in options]
    return lambda v: any(sub(v) for sub in subs)


_COMPILERS: dict[str, Callable[[Any, dict[str, Any]], Check | None]] = {
    "type": _type,
    "properties": _properties,
    "additionalProperties": _additional,
    "required": _required,
    "enum": _enum,
    "const": _const,
    "pattern": _pattern,
    "minimum": _bound(lambda v, limit: v >= limit),
    "maximum": _bound(lambda v, limit: v <= limit),
    "exclusiveMinimum": _bound(lambda v, limit: v > limit),
    "minLength": _size(str, lambda n, limit: n >= limit),
    "minItems": _size(list, lambda n, limit: n >= limit),
    "minProperties": _size(dict, lambda n, limit: n >= limit),
    "maxProperties": _size(dict, lambda n, limit: n <= limit),
    "uniqueItems": _unique,
    "items": _items,
    "propertyNames": _property_names,
    "oneOf": _one_of,
    "anyOf": _any_of,
}
