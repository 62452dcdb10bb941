"""Which columns of a table feed which input of a model: one rule for the server's
tables (MLflow's dataframes, CSV bodies) and for batch scoring's files.

Columns are matched by name to the model's inputs (each column one input) or, for a
single input, to its `feature_names`; extra columns are left out. Without feature
names, a single input takes the columns in the order given.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlinfra.serving.tensors import TensorSpec


class MissingColumns(ValueError):
    """A column the model reads is not in the table; the message names them all."""


def feed_columns(columns: Sequence[str], inputs: Sequence[TensorSpec],
                 features: Sequence[str] | None) -> dict[str, list[str]]:
    """Each input's name -> the columns that make it, in order. Raises MissingColumns."""
    present = set(columns)
    if len(inputs) == 1:
        if features is None:
            return {inputs[0].name: list(columns)}
        missing = [f for f in features if f not in present]
        if missing:
            raise MissingColumns(f"missing columns {missing}: the model's features are "
                                 f"{list(features)}")
        return {inputs[0].name: list(features)}
    missing = [s.name for s in inputs if s.name not in present]
    if missing:
        raise MissingColumns(f"missing columns {missing}: the model's inputs are "
                             f"{[s.name for s in inputs]}, one column each")
    return {s.name: [s.name] for s in inputs}
