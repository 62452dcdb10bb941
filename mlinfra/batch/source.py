"""Inputs read in mini-batches with pyarrow, never whole: CSV, Parquet and JSON lines.

Only the columns the model reads and those the output keeps are read. A column the
model reads must hold numbers: a missing column is an error before any row is scored,
and a value that is not a number (or is empty) is an error naming the column and the
first such row. Kept columns of a CSV file are copied as the text they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mlinfra.errors import MlinfraError
from mlinfra.serving.columns import MissingColumns, feed_columns
from mlinfra.serving.tensors import TensorSpec

FORMATS = ("csv", "parquet", "jsonl")
_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
             ".ndjson": "jsonl"}
# Bytes of CSV or JSON parsed at a time. NOTE: pyarrow's streaming readers decode
# blocks ahead of the reader: the memory they hold grows with the block (peak 230 MB
# with 4 MiB blocks, 100 MB with 1 MiB, measured on 6 million rows), not the speed.
_BLOCK = 1 << 20


class BatchInputError(MlinfraError):
    """The input cannot be scored: a missing column, a value that is not a number."""


def format_of(path: Path) -> str:
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise BatchInputError(f"{path}: cannot tell its format from its name: it must end "
                              "in .csv, .parquet or .jsonl")
    return found


def header(path: Path, fmt: str) -> list[str]:
    """The input's column names, read from its first block only."""
    if not path.is_file():
        raise BatchInputError(f"{path}: no such file")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.ParquetFile(path).schema_arrow.names)
        except (pa.ArrowException, OSError) as err:
            raise BatchInputError(f"{path}: not a Parquet file: {err}") from None
    with open(path, "rb") as f:
        start = f.read(4)
    if not start:
        raise BatchInputError(f"{path}: the file is empty (0 bytes): "
                              + ("a CSV holds a header row at least" if fmt == "csv" else
                                 "a JSON lines file holds one object a line"))
    if start == b"PAR1":
        raise BatchInputError(f"{path}: a Parquet file named .{fmt}: name it .parquet")
    try:
        return list(_open(path, fmt, {}, None).schema.names)
    except pa.ArrowException as err:
        if fmt == "jsonl":
            # NOTE: pyarrow infers the first block's types, and fails on a field that
            # holds a number on one line and text on another: the names are read
            # here, and the scoring names the value that is not a number
            names = _jsonl_names(path)
            if names is not None:
                return names
        raise BatchInputError(f"{path}: cannot be read as {fmt}: {_first_line(err)}") from None


def check_kept_for_csv(path: Path, fmt: str, keep: Sequence[str]) -> None:
    """Raises BatchInputError naming a kept column a CSV output cannot hold: a list, a
    struct or a map of a Parquet file, or of a JSON lines file's first block."""
    if not keep or fmt == "csv":
        return
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            schema = pq.ParquetFile(path).schema_arrow
        else:
            schema = _open(path, fmt, {}, None).schema
    except (pa.ArrowException, OSError):
        return  # the scoring names what it cannot read
    for column in keep:
        index = schema.get_field_index(column)
        kind = schema.field(index).type if index >= 0 else None
        if kind is not None and pa.types.is_nested(kind):
            raise BatchInputError(f"{path}: keep_input_columns: column {column} holds "
                                  f"{kind}, which a CSV output cannot: keep another column, "
                                  "or write parquet or jsonl (output.format)")


def fed_columns(path: Path, columns: Sequence[str], inputs: Sequence[TensorSpec],
                features: Sequence[str] | None, keep: Sequence[str]) -> dict[str, list[str]]:
    """Each model input -> its columns, as the server maps a table's columns; raises
    BatchInputError naming the file when a column the model reads or the output keeps
    is missing."""
    try:
        fed = feed_columns(columns, inputs, features)
    except MissingColumns as err:
        raise BatchInputError(f"{path}: {err}") from None
    absent = [c for c in keep if c not in set(columns)]
    if absent:
        raise BatchInputError(f"{path}: keep_input_columns names columns it does not have: "
                              f"{absent} (its columns: {list(columns)})")
    for spec in inputs:
        width = spec.shape[1] if len(spec.shape) == 2 else 1
        if width is not None and len(fed[spec.name]) != width:
            raise BatchInputError(f"{path}: input {spec.name} takes {width} columns; the "
                                  f"file gives {len(fed[spec.name])}: "
                                  f"{fed[spec.name]} (name them in the model's "
                                  "feature_names metadata, or give exactly those)")
    return fed


def _arrow_type(dtype: np.dtype[Any]) -> pa.DataType:
    if dtype.kind == "f":
        return pa.float64()
    if dtype.kind == "b":
        return pa.bool_()
    return pa.int64()


def numeric_types(fed: dict[str, list[str]], inputs: Sequence[TensorSpec]
                  ) -> dict[str, pa.DataType]:
    """The type each fed column is read as: float64, int64 or bool, by its input."""
    by_name = {s.name: s for s in inputs}
    return {column: _arrow_type(by_name[name].dtype)
            for name, columns in fed.items() for column in columns}


def _open(path: Path, fmt: str, numeric: dict[str, pa.DataType],
          text: Sequence[str] | None) -> Any:
    """A streaming reader of `path` holding the numeric and text columns (all columns
    when `text` is None)."""
    if fmt == "csv":
        import pyarrow.csv as pcsv

        # a kept column the model reads is read once, as a number
        include = None if text is None else [*numeric, *[c for c in text
                                                         if c not in numeric]]
        types = {**{c: pa.string() for c in text or ()}, **numeric}
        return pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=_BLOCK),
                             convert_options=pcsv.ConvertOptions(
                                 column_types=types, include_columns=include))
    import pyarrow.json as pjson

    schema = pa.schema(list(numeric.items())) if numeric else None
    return pjson.open_json(path, read_options=pjson.ReadOptions(block_size=_BLOCK),
                           parse_options=pjson.ParseOptions(
                               explicit_schema=schema, unexpected_field_behavior="infer"))


def _first_line(err: BaseException) -> str:
    """The error's first line, as text a terminal shows (it may quote binary data)."""
    line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return "".join(c if c.isprintable() else "?" for c in line)[:300]


def mini_batches(path: Path, fmt: str, size: int, numeric: dict[str, pa.DataType],
                 text: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The input as record batches of exactly `size` rows (the last one fewer), holding
    the numeric columns (checked: numbers, none empty) then the text ones."""
    columns = [*numeric, *[c for c in text if c not in numeric]]
    offset = 0
    buffered: list[pa.RecordBatch] = []
    count = 0
    for batch in _batches(path, fmt, numeric, text, columns, size):
        _check_numbers(path, batch, numeric, offset + count)
        buffered.append(batch)
        count += batch.num_rows
        while count >= size:
            table = pa.Table.from_batches(buffered)
            out = table.slice(0, size).combine_chunks().to_batches()
            yield out[0] if out else pa.RecordBatch.from_pylist([], schema=table.schema)
            rest = table.slice(size)
            buffered = rest.combine_chunks().to_batches() if rest.num_rows else []
            count -= size
            offset += size
    if count:
        yield pa.Table.from_batches(buffered).combine_chunks().to_batches()[0]


def _batches(path: Path, fmt: str, numeric: dict[str, pa.DataType], text: Sequence[str],
             columns: list[str], size: int) -> Iterator[pa.RecordBatch]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path)
        schema = file.schema_arrow
        for column, wanted in numeric.items():
            have = schema.field(column).type
            whole = pa.types.is_integer(wanted) and not pa.types.is_integer(have)
            if whole or not (pa.types.is_integer(have) or pa.types.is_floating(have)
                             or pa.types.is_boolean(have)):
                # NOTE: a float column fed to an integer input is read once more, whole
                # numbers checked, before pyarrow's cast would fail naming no row
                _raise_first_bad(path, column, (b.column(0) for b in file.iter_batches(
                    batch_size=size, columns=[column])), f"of type {have}",
                    whole=pa.types.is_integer(wanted))
        for batch in file.iter_batches(batch_size=size, columns=columns):
            yield _cast(batch, numeric)
        return
    if path.stat().st_size == 0:
        return
    rows = 0
    try:
        reader = _open(path, fmt, numeric, text)
        for batch in reader:
            rows += batch.num_rows
            yield batch.select(columns) if fmt == "jsonl" else batch
    except pa.ArrowInvalid as err:
        _explain(path, fmt, numeric, rows, err)


def _cast(batch: pa.RecordBatch, numeric: dict[str, pa.DataType]) -> pa.RecordBatch:
    import pyarrow.compute as pc  # NOTE: lazily, as in _check_numbers

    arrays = [batch.column(i) if name not in numeric or batch.column(i).type == numeric[name]
              else pc.cast(batch.column(i), numeric[name])
              for i, name in enumerate(batch.schema.names)]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _check_numbers(path: Path, batch: pa.RecordBatch, numeric: dict[str, pa.DataType],
                   offset: int) -> None:
    for column in numeric:
        values = batch.column(batch.schema.get_field_index(column))
        if values.null_count:
            # NOTE: imported only here (and in _cast): pyarrow.compute builds its
            # functions when imported, 0.1-0.2 CPU s of the scorer's start-up
            # (benchmarks/batch.py, the mlinfra csv row: CPU s)
            import pyarrow.compute as pc

            row = offset + int(pc.index(values.is_null(), True).as_py())
            raise BatchInputError(f"{path}: column {column}: row {row + 1} (row_id {row}) "
                                  "is empty: every column the model reads needs a number")


def _explain(path: Path, fmt: str, numeric: dict[str, pa.DataType], rows: int,
             err: pa.ArrowInvalid) -> None:
    """pyarrow names the column that failed to convert, not the row: find the first
    row of the numeric columns that is not a number, reading them as text."""
    for column in numeric:
        if fmt == "csv":
            reader = _open(path, fmt, {}, [column])
            values: Iterator[pa.Array] = (b.column(0) for b in reader)
        else:
            values = _jsonl_values(path, column)
        try:
            _raise_first_bad(path, column, values, "",
                             whole=pa.types.is_integer(numeric[column]))
        except pa.ArrowInvalid:
            continue
    line = _csv_line(path, rows, str(err)) if fmt == "csv" else None
    where = f"line {line}" if line is not None else f"a row after row {rows}"
    raise BatchInputError(f"{path}: cannot be read as {fmt} at {where}: "
                          f"{_first_line(err)}") from None


def _csv_line(path: Path, rows: int, error: str) -> int | None:
    """The line of the row pyarrow quotes in a parse error ("Expected 3 columns, got
    2: y,1"): the first that reads so past the `rows` rows read before its block. Only
    on this error: pyarrow's streaming reader knows no row numbers."""
    marker = re.search(r"Expected \d+ columns, got \d+: (.*)", error)
    if marker is None:
        return None
    wanted = marker.group(1).strip()
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number > rows + 1 and raw.decode(errors="replace").strip() == wanted:
                return number
    return None


def _jsonl_names(path: Path) -> list[str] | None:
    """The fields of the lines of a JSON lines file's first block, in order of first
    appearance; None when a line there is not a JSON object."""
    import json

    names: dict[str, None] = {}
    with open(path, "rb") as file:
        block = file.read(_BLOCK)
        whole = not file.read(1)
    lines = block.splitlines()
    for line in lines if whole or len(lines) == 1 else lines[:-1]:  # not a cut line
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            return None
        if not isinstance(row, dict):
            return None
        names.update(dict.fromkeys(row))
    return list(names)


def _jsonl_values(path: Path, column: str) -> Iterator[pa.Array]:
    """A JSON lines field's values, a line each (None where a line lacks it or holds
    ""), as text; a JSON string is text even when it spells a number ('"3"')."""
    import json

    chunk: list[str | None] = []
    with open(path, "rb") as file:
        for line in file:
            if not line.strip():
                continue
            try:
                value = json.loads(line).get(column)
            except (ValueError, AttributeError):  # not an object: pyarrow's error says
                return
            chunk.append(None if value in (None, "") else f"\x00{value}" if isinstance(
                value, str) else json.dumps(value))
            if len(chunk) == 10_000:
                yield pa.array(chunk, pa.string())
                chunk = []
    if chunk:
        yield pa.array(chunk, pa.string())


def _raise_first_bad(path: Path, column: str, chunks: Iterator[pa.Array], what: str,
                     whole: bool = False) -> None:
    """Raises BatchInputError naming the first value of `column` that is not a number
    (`whole`: not an integer, for an integer input)."""
    offset = 0
    for chunk in chunks:
        for i, value in enumerate(chunk.to_pylist()):
            if whole and _number(value) and not _whole(value):
                raise BatchInputError(
                    f"{path}: column {column}{' ' + what if what else ''}: row "
                    f"{offset + i + 1} (row_id {offset + i}) holds "
                    f"{str(value).removeprefix(chr(0))[:40]!r}, not an integer (the model's "
                    "input takes integers)")
            if not _number(value):
                where = f"row {offset + i + 1} (row_id {offset + i})"
                shown = "is empty" if value in (None, "") else \
                    f"holds {str(value).removeprefix(chr(0))[:40]!r}"
                raise BatchInputError(f"{path}: column {column}{' ' + what if what else ''}"
                                      f": {where} {shown}, not a number")
        offset += len(chunk)


def _whole(value: Any) -> bool:
    """A number (see _number) that an integer input takes as it is: a float without a
    fraction, or text spelling an integer."""
    if isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return value.is_integer()
    try:
        int(str(value))
    except ValueError:
        return False
    return True


def _number(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return isinstance(value, bool)
    if isinstance(value, int | float):
        return True
    if str(value).startswith("\x00"):  # a JSON string (_jsonl_values)
        return False
    try:
        float(str(value))
    except ValueError:
        return False
    return True
