"""The runs table's filter: `metrics.auc > 0.8 and params.C == 1 and status = completed`.

Python's own parser reads the expression (`ast.parse`, never `eval`); only comparisons
of a field with a constant, joined by `and` / `or` / `not`, are accepted. A single `=`
is read as `==`, as MLflow's search syntax writes it. Fields are `metrics.NAME`,
`params.NAME` (or `params["a-name"]` for a name that is not an identifier) and the
run's own columns (`job`, `status`, `commit`, `experiment`, `step`, `id`).
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from typing import Any

from mlinfra.errors import MlinfraError

# The run's own columns a filter or a sort can name.
ATTRIBUTES = ("id", "job", "experiment", "pipeline", "step", "status", "commit", "branch",
              "started", "duration")

_OPS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Lt: operator.lt, ast.LtE: operator.le,
}
# A lone `=` (not part of ==, !=, <=, >=) outside quotes.
_SINGLE_EQ = re.compile(r"""("[^"]*"|'[^']*')|(?<![=!<>])=(?!=)""")

Row = Callable[[str], Any]  # a field's value in one run ("metrics.auc" -> 0.91)
Predicate = Callable[[Any], bool]
# How a predicate reads a field of what it is given: by default that is a Row.
Getter = Callable[[str], Callable[[Any], Any]]


def _by_name(name: str) -> Callable[[Any], Any]:
    return lambda row: row(name)


class FilterError(MlinfraError):
    """A filter the runs table cannot read; the message names the column."""


def field_name(node: ast.expr, back: list[int]) -> str:
    """`metrics.auc`, `params["max-depth"]` or `status` as the canonical field name."""
    if isinstance(node, ast.Name):
        if node.id in ("metrics", "params"):
            raise _error(node, back, f"name a {node.id[:-1]}: {node.id}.NAME")
        if node.id not in ATTRIBUTES:
            raise _error(node, back, f"unknown field '{node.id}' (use metrics.NAME, "
                         f"params.NAME or one of {', '.join(ATTRIBUTES)})")
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
            and node.value.id in ("metrics", "params"):
        return f"{node.value.id}.{node.attr}"
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
            and node.value.id in ("metrics", "params") \
            and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return f"{node.value.id}.{node.slice.value}"
    raise _error(node, back, "expected a field: metrics.NAME, params.NAME or a run column")


def _constant(node: ast.expr, back: list[int]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
            and isinstance(node.operand, ast.Constant) \
            and isinstance(node.operand.value, int | float):
        return -node.operand.value
    if isinstance(node, ast.Name):  # a bare word: status = completed
        return node.id
    raise _error(node, back, "expected a number or a quoted text to compare with")


def _error(node: ast.AST, back: list[int], message: str) -> FilterError:
    return FilterError(f"filter, column {_column(back, getattr(node, 'col_offset', 0))}: "
                       f"{message}")


def _column(back: list[int], offset: int) -> int:
    """The 1-based column in the text as typed of `offset` in the text parsed."""
    return (back[offset] if offset < len(back) else (back[-1] + 1 if back else 0)) + 1


def _normalise(text: str) -> tuple[str, list[int]]:
    """The text with each lone `=` as `==`, and for each of its characters the index
    of the character typed."""
    source: list[str] = []
    back: list[int] = []
    at = 0
    for match in _SINGLE_EQ.finditer(text):
        for i in range(at, match.start()):
            source.append(text[i])
            back.append(i)
        if match.group(1):
            source.extend(match.group(1))
            back.extend(range(match.start(), match.end()))
        else:
            source.extend("==")
            back.extend((match.start(), match.start()))
        at = match.end()
    source.extend(text[at:])
    back.extend(range(at, len(text)))
    return "".join(source), back


def compare(value: Any, op: Callable[[Any, Any], bool], wanted: Any) -> bool:
    """A run's value against the filter's constant: numbers as numbers, else as text;
    a run without the field matches no comparison."""
    if value is None:
        return False
    if isinstance(wanted, int | float) and not isinstance(wanted, bool):
        try:
            return op(float(value), float(wanted))
        except (TypeError, ValueError):
            return False
    try:
        return op(str(value), str(wanted))
    except TypeError:
        return False


def _test(get: Callable[[Any], Any], op: Callable[[Any, Any], bool], wanted: Any
          ) -> Predicate:
    if isinstance(wanted, int | float) and not isinstance(wanted, bool):
        number = float(wanted)

        def numeric(row: Any) -> bool:
            value = get(row)
            if isinstance(value, float | int) and not isinstance(value, bool):
                return op(float(value), number)
            return compare(value, op, wanted)

        return numeric
    return lambda row: compare(get(row), op, wanted)


def _build(node: ast.expr, back: list[int], fields: set[str], getter: Getter
           ) -> Predicate:
    if isinstance(node, ast.BoolOp):
        parts = [_build(v, back, fields, getter) for v in node.values]
        if isinstance(node.op, ast.And):
            return lambda row: all(p(row) for p in parts)
        return lambda row: any(p(row) for p in parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _build(node.operand, back, fields, getter)
        return lambda row: not inner(row)
    if isinstance(node, ast.Compare):
        left = node.left
        tests: list[Predicate] = []
        for op_node, right in zip(node.ops, node.comparators, strict=True):
            op = _OPS.get(type(op_node))
            if op is None:
                raise _error(right, back, "compare with =, !=, >, >=, < or <=")
            name = field_name(left, back)
            wanted = _constant(right, back)
            fields.add(name)
            tests.append(_test(getter(name), op, wanted))
            left = right
        return lambda row: all(t(row) for t in tests)
    raise _error(node, back, "expected a comparison such as metrics.auc > 0.8")


def parse(text: str, getter: Getter = _by_name) -> tuple[Predicate | None, set[str]]:
    """The filter as a predicate over a run (None for an empty filter), and the fields
    it reads; `getter` makes the function that reads a field from a run. Raises
    FilterError naming the column of the first mistake."""
    text = text.strip()
    if not text:
        return None, set()
    source, back = _normalise(text)
    if "\n" in source:
        raise FilterError("filter: write it on one line")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        # Python gives no offset when the text ends too early: the column after it.
        column = _column(back, err.offset - 1) if err.offset else len(text) + 1
        raise FilterError(f"filter, column {column}: cannot read it ({err.msg}); write "
                          "conditions such as metrics.auc > 0.8 and params.C = 1") from None
    fields: set[str] = set()
    return _build(tree.body, back, fields, getter), fields
