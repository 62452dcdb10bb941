"""Reading one YAML file safely, and finding where a value stands in it.

Loading uses PyYAML's C parser and keeps no positions, because positions cost more
than the parse itself. A `Problem` names a place by document index and path; only
when a file has problems is it composed again to turn those paths into lines.

PyYAML is imported only when a file must be parsed: a plan whose files are all in the
parse cache never loads it.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import yaml

MAX_FILE_BYTES = 5 * 1024 * 1024
# Nodes one document may expand to through aliases; far above any real resource.
MAX_EXPANDED_NODES = 100_000
# Mappings and sequences within each other; far above any real resource, far below
# what recursive code (PyYAML's composer, JSON Schema) can follow.
MAX_DEPTH = 64

Path_ = tuple[str | int, ...]


class Problem(NamedTuple):
    """A configuration problem before it is given a line: where (document, path) and what.

    `line`/`column` are set (1-based) when the place is already known, as for syntax
    errors; otherwise `doc` and `path` are resolved by `Locator`. `at_key` points at
    the key of the last path element rather than its value (unknown fields).
    """

    file: str
    message: str
    doc: int = 0
    path: Path_ = ()
    address: str = ""
    at_key: bool = False
    line: int = 0
    column: int = 0


def field_name(path: Path_) -> str:
    """Render a path as users write it: `deployments[0].model`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def safe_loader() -> type[yaml.SafeLoader]:
    """PyYAML's C loader, or its pure-Python one where PyYAML was built without libyaml
    (same values, slower)."""
    import yaml

    loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return loader


class TooDeep(Exception):
    """A document nested deeper than MAX_DEPTH, at `mark`."""

    def __init__(self, mark: Any) -> None:
        super().__init__(f"nested deeper than {MAX_DEPTH} levels")
        self.mark = mark


def _full_load(text: str) -> tuple[list[Any], list[tuple[yaml.Mark, str]]]:
    """Documents and duplicate keys, by PyYAML's C loader: every YAML feature."""
    import yaml

    duplicates: list[tuple[yaml.Mark, str]] = []

    class Loader(safe_loader()):  # type: ignore[misc]
        def construct_mapping(self, node: yaml.MappingNode,
                              deep: bool = False) -> dict[Any, Any]:
            seen: set[str] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                    if key_node.value in seen:
                        duplicates.append((key_node.start_mark, key_node.value))
                    seen.add(key_node.value)
            return dict(super().construct_mapping(node, deep=deep))

    loader = Loader(text)
    try:
        documents = []
        while loader.check_data():
            documents.append(loader.get_data())
    finally:
        loader.dispose()
    return documents, duplicates


class _NotPlain(Exception):
    """The file uses a feature the event builder leaves to the full loader."""


def _event_load(text: str) -> tuple[list[Any], list[tuple[yaml.Mark, str]]]:
    """Documents and duplicate keys, built straight from the C parser's events.

    Configuration is plain YAML: mappings, sequences and scalars. For that, building
    values from events costs half of PyYAML's constructor, with the same resolver and
    scalar constructors, so the values are identical (a test compares both on every
    YAML file of the repository). Anchors, aliases, tags, merge keys and complex keys
    raise _NotPlain; errors raise YAMLError: the caller then uses the full loader.
    """
    import yaml

    try:
        from yaml._yaml import CParser
    except ImportError:  # PyYAML without libyaml: the full (pure) loader does it all
        raise _NotPlain from None
    from yaml.constructor import SafeConstructor
    from yaml.resolver import Resolver

    scalar_event, mapping_start, sequence_start = (
        yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)
    end_events = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    resolvers = Resolver.yaml_implicit_resolvers
    constructor = SafeConstructor()
    plain: dict[str, Any] = {}  # a plain scalar's text -> its value (all immutable)

    def plain_value(text: str) -> Any:
        for tag, regexp in resolvers.get(text[:1], ()):
            if regexp.match(text):
                construct = constructor.yaml_constructors.get(tag)
                if construct is None:  # merge keys, '=' values
                    raise _NotPlain
                return construct(constructor, yaml.ScalarNode(tag, text))
        return text

    documents: list[Any] = []
    duplicates: list[tuple[yaml.Mark, str]] = []
    # What is being filled: the container, and for a mapping its pending key (or
    # _NotPlain, a marker no value can be) and the raw texts of the keys seen.
    container: Any = documents
    key: Any = None
    seen: set[str] = set()
    stack: list[tuple[Any, Any, set[str]]] = []
    parser = CParser(text)
    try:
        while True:
            event: Any = parser.get_event()
            kind = type(event)
            if kind is scalar_event:
                if event.anchor is not None or event.tag is not None:
                    raise _NotPlain
                raw = event.value
                if not event.implicit[0]:  # quoted
                    value: Any = raw
                else:
                    value = plain.get(raw, _NotPlain)
                    if value is _NotPlain:
                        value = plain[raw] = plain_value(raw)
                if key is _NotPlain:  # the scalar is a key
                    if raw in seen:
                        duplicates.append((event.start_mark, raw))
                    seen.add(raw)
                    key = value
                    continue
            elif kind is mapping_start or kind is sequence_start:
                if event.anchor is not None or event.tag is not None:
                    raise _NotPlain
                if key is _NotPlain:  # a mapping or sequence as a key
                    raise _NotPlain
                value = {} if kind is mapping_start else []
                if type(container) is list:
                    container.append(value)
                else:
                    container[key] = value
                stack.append((container, key, seen))
                if len(stack) > MAX_DEPTH:
                    raise TooDeep(event.start_mark)
                container, key, seen = value, (_NotPlain if kind is mapping_start
                                               else None), set()
                continue
            elif kind in end_events:
                container, key, seen = stack.pop()
                if type(container) is dict:
                    key = _NotPlain
                continue
            elif kind is yaml.StreamEndEvent:
                return documents, duplicates
            elif kind is yaml.AliasEvent:
                raise _NotPlain
            else:  # stream start, document start and end
                continue
            if type(container) is list:
                container.append(value)
            else:
                container[key] = value
                key = _NotPlain
    finally:
        parser.dispose()


def load_documents(text: str) -> tuple[list[Any], list[tuple[yaml.Mark, str]]]:
    """Every document of `text` and its duplicate keys in file order; raises
    yaml.YAMLError, TooDeep or RecursionError."""
    import yaml

    try:
        documents, duplicates = _event_load(text)
    except (_NotPlain, yaml.YAMLError):
        documents, duplicates = _full_load(text)
        if _deeper_than(documents, MAX_DEPTH):  # the full loader does not count
            raise TooDeep(None) from None
    duplicates.sort(key=lambda found: (found[0].line, found[0].column))
    return documents, duplicates


class YamlFile(NamedTuple):
    """A file's documents (None for empty ones) and the problems found reading it.
    `checked`: the parse cache knows every document passes the schema checks."""

    rel: str
    documents: list[Any]
    problems: list[Problem]
    text: str = ""
    key: str = ""
    checked: bool = False


def _syntax_problem(rel: str, err: yaml.YAMLError) -> Problem:
    import yaml

    if not isinstance(err, yaml.MarkedYAMLError):
        return Problem(rel, f"invalid YAML: {err}", line=1, column=1)
    problem = err.problem or "invalid YAML"
    mark = err.problem_mark or err.context_mark
    if "'\\t'" in problem or "\t" in problem:
        message = "tab character: YAML is indented with spaces, never tabs"
    elif "end of stream" in problem and err.context_mark is not None:
        # An unclosed quote or bracket: the useful place is where it was opened.
        mark = err.context_mark
        message = f"{err.context} that is never closed"
    else:
        message = f"invalid YAML: {problem}"
        if err.context:
            message += f" ({err.context})"
    line = mark.line + 1 if mark else 1
    column = mark.column + 1 if mark else 1
    return Problem(rel, message, line=line, column=column)


def _expanded_size(obj: Any, memo: dict[int, int], active: set[int]) -> int:
    """Nodes `obj` stands for once every alias is expanded (aliases share objects)."""
    if not isinstance(obj, dict | list):
        return 1
    key = id(obj)
    if key in memo:
        return memo[key]
    if key in active:
        raise RecursionError("recursive alias")
    active.add(key)
    children = obj.values() if isinstance(obj, dict) else obj
    total = 1
    for child in children:
        total += _expanded_size(child, memo, active)
        if total > MAX_EXPANDED_NODES:
            break
    active.discard(key)
    memo[key] = total
    return total


def _deeper_than(documents: list[Any], limit: int) -> bool:
    """Whether a value nests mappings and sequences more than `limit` deep (no
    recursion; shared values, from aliases, are looked at once)."""
    stack: list[tuple[Any, int]] = [(doc, 1) for doc in documents]
    seen: set[int] = set()
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, dict | list) or id(value) in seen:
            continue
        if depth > limit:
            return True
        seen.add(id(value))
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children)
    return False


def _first_alias_line(text: str) -> tuple[int, int]:
    import yaml

    for event in yaml.parse(text, Loader=safe_loader()):
        if isinstance(event, yaml.AliasEvent):
            mark = event.start_mark
            return (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return 1, 1


class ParseCache:
    """Documents of files that parsed cleanly, keyed by a hash of their bytes.

    Parsing is most of a plan's time and most files do not change between commands, so
    the documents are kept (marshal, exact for YAML's plain types) in the project's
    .mlinfra/cache. A hit needs identical bytes, so it is never stale. An entry also
    says whether every document passed the schema checks; `checks` names the schemas
    that verdict was made with, and a cache made with others is not read. Entries unused
    by a run are dropped when it saves.
    """

    _HEADER = f"mlinfra-documents-2-py{sys.version_info[0]}.{sys.version_info[1]}"

    def __init__(self, path: Path, checks: str = "") -> None:
        self.path = path
        self.header = f"{self._HEADER}-{checks}"
        self._old: dict[str, tuple[list[Any], bool]] = {}
        self._new: dict[str, tuple[list[Any], bool]] = {}
        try:
            header, entries = marshal.loads(path.read_bytes())
            if header == self.header and isinstance(entries, dict):
                self._old = entries
        except (OSError, ValueError, EOFError, TypeError):
            pass

    def get(self, key: str) -> tuple[list[Any], bool] | None:
        entry = self._old.get(key)
        if entry is not None:
            self._new[key] = entry
        return entry

    def put(self, key: str, documents: list[Any]) -> None:
        try:
            marshal.dumps(documents)  # timestamps or binary values: not cached
        except ValueError:
            return
        self._new[key] = (documents, False)

    def forget(self, key: str) -> None:
        """Keep this entry out of the cache file (it holds a sensitive value)."""
        self._new.pop(key, None)

    def mark_checked(self, key: str) -> None:
        """Every document of this entry passed the schema checks."""
        if key in self._new:
            self._new[key] = (self._new[key][0], True)

    def save(self) -> None:
        if self._new == self._old:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(marshal.dumps((self.header, self._new)))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a cache that cannot be written only costs time


def read_yaml(path: Path, rel: str, cache: ParseCache | None = None) -> YamlFile:
    """Read every document of `path`; never raises for bad content, returns problems."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        return YamlFile(rel, [], [Problem(rel, f"cannot read file: {err.strerror}")])
    if len(raw) > MAX_FILE_BYTES:
        size = len(raw) / (1024 * 1024)
        return YamlFile(rel, [], [Problem(
            rel, f"file is {size:.1f} MiB; YAML files are limited to "
            f"{MAX_FILE_BYTES // (1024 * 1024)} MiB: split it", line=1, column=1)])
    if b"\0" in raw:
        return YamlFile(rel, [], [Problem(rel, "binary file (it holds NUL bytes): not YAML",
                                          line=1, column=1)])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        return YamlFile(rel, [], [Problem(rel, "not UTF-8 text: YAML files must be UTF-8",
                                          line=line, column=1)])
    key = hashlib.blake2b(raw, digest_size=20).hexdigest()
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        return YamlFile(rel, cached[0], [], text, key, checked=cached[1])
    import yaml

    try:
        documents, duplicates = load_documents(text)
    except yaml.YAMLError as err:
        return YamlFile(rel, [], [_syntax_problem(rel, err)], text)
    except TooDeep as err:
        line, column = (err.mark.line + 1, err.mark.column + 1) if err.mark else (1, 1)
        return YamlFile(rel, [], [Problem(rel, f"{err}: refused", line=line, column=column)],
                        text)
    except RecursionError:  # the full loader's composer, on an anchor-bearing file
        return YamlFile(rel, [], [Problem(rel, f"nested deeper than {MAX_DEPTH} levels: "
                                          "refused", line=1, column=1)], text)
    problems = [Problem(rel, f"duplicate key '{key}'", line=mark.line + 1,
                        column=mark.column + 1) for mark, key in duplicates]
    if "*" in text:  # no alias can exist without one
        for index, doc in enumerate(documents):
            try:
                too_big = _expanded_size(doc, {}, set()) > MAX_EXPANDED_NODES
                message = (f"aliases expand to more than {MAX_EXPANDED_NODES:,} nodes "
                           "(an alias bomb?): refused")
            except RecursionError:
                too_big, message = True, "recursive alias: refused"
            if too_big:
                line, column = _first_alias_line(text)
                problems.append(Problem(rel, message, doc=index, line=line, column=column))
                documents = []
                break
    if not any(doc is not None for doc in documents) and not problems:
        problems.append(Problem(rel, "empty file: it holds no YAML document", line=1,
                                column=1))
    if cache is not None and not problems:
        cache.put(key, documents)
    return YamlFile(rel, documents, problems, text, key)


class Locator:
    """Turns (document, path) into (line, column) by composing the file once, lazily."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._docs: list[yaml.Node] | None = None

    def _documents(self) -> list[yaml.Node]:
        import yaml

        if self._docs is None:
            try:
                self._docs = list(yaml.compose_all(self._text, Loader=safe_loader()))
            except (yaml.YAMLError, RecursionError):
                self._docs = []
        return self._docs

    def locate(self, doc: int, path: Path_, at_key: bool = False) -> tuple[int, int]:
        docs = self._documents()
        if doc >= len(docs):
            return 1, 1
        node: yaml.Node = docs[doc]
        mark = node.start_mark
        for depth, part in enumerate(path):
            child = self._child(node, part)
            if child is None:
                break
            key_node, node = child
            last = depth == len(path) - 1
            mark = key_node.start_mark if (at_key and last and key_node) else node.start_mark
        return mark.line + 1, mark.column + 1

    @staticmethod
    def _child(node: yaml.Node, part: str | int) -> tuple[Any, yaml.Node] | None:
        import yaml

        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    return key_node, value_node
        elif (isinstance(node, yaml.SequenceNode) and isinstance(part, int)
              and 0 <= part < len(node.value)):
            return None, node.value[part]
        return None


def walk_strings(obj: Any, path: Path_ = ()) -> Iterator[tuple[Path_, str]]:
    """Every string value in `obj` with its path (keys are not visited)."""
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from walk_strings(value, (*path, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            yield from walk_strings(value, (*path, index))
