"""`POST /v2/models/{m}/feedback`: labels for requests the endpoint captured, joined
later to their rows by request id (the `x-request-id` each answer carried).

The body is either parallel lists or one object per label:

    {"request_ids": ["a1", "b2"], "labels": [1, 0]}            # row 0 of each request
    {"feedback": [{"request_id": "a1", "row": 3, "label": 1}]}  # a row of a batch

A label is a number, a string or a boolean; it is kept as text and read by the monitor
as the model's evaluation reads labels.
"""

from __future__ import annotations

from typing import Any

from mlinfra.serving.errors import ClientError
from mlinfra.serving.http import parse_json

MAX_LABELS = 100_000
_FORMS = ('{"request_ids": [...], "labels": [...]} or {"feedback": [{"request_id": ..., '
          '"label": ...}, ...]}')


def _label(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float) and value == value:
        return str(int(value)) if isinstance(value, int) or value.is_integer() else repr(value)
    if isinstance(value, str) and value:
        return value
    raise ClientError(422, f"{where}: a label is a number, a string or true/false, got "
                      f"{str(value)[:40]!r}")


def _request_id(value: Any, where: str) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value):
        raise ClientError(422, f"{where}: request_id must be the x-request-id of a "
                          "request (a string)")
    return str(value)


def decode(body: bytes) -> tuple[list[str], list[int], list[str]]:
    """(request ids, rows, labels), checked."""
    data = parse_json(body)
    if not isinstance(data, dict):
        raise ClientError(400, f"feedback is {_FORMS}")
    ids: list[str] = []
    rows: list[int] = []
    labels: list[str] = []
    if "feedback" in data:
        items = data["feedback"]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ClientError(400, f"feedback is {_FORMS}")
        for index, item in enumerate(items):
            where = f"feedback[{index}]"
            if "label" not in item:
                raise ClientError(422, f"{where}: no label")
            row = item.get("row", 0)
            if type(row) is not int or row < 0:
                raise ClientError(422, f"{where}: row must be a whole number >= 0")
            ids.append(_request_id(item.get("request_id"), where))
            rows.append(row)
            labels.append(_label(item["label"], where))
    elif "request_ids" in data or "labels" in data:
        given_ids, given_labels = data.get("request_ids"), data.get("labels")
        if not isinstance(given_ids, list) or not isinstance(given_labels, list):
            raise ClientError(400, f"feedback is {_FORMS}")
        if len(given_ids) != len(given_labels):
            raise ClientError(422, f"{len(given_ids)} request_ids for {len(given_labels)} "
                              "labels: give one label per request id")
        for index, (rid, label) in enumerate(zip(given_ids, given_labels, strict=True)):
            ids.append(_request_id(rid, f"request_ids[{index}]"))
            rows.append(0)
            labels.append(_label(label, f"labels[{index}]"))
    else:
        raise ClientError(400, f"feedback is {_FORMS}")
    if not labels:
        raise ClientError(422, "no labels given")
    if len(labels) > MAX_LABELS:
        raise ClientError(413, f"at most {MAX_LABELS} labels a request")
    return ids, rows, labels
