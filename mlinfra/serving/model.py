"""A deployment's model: an onnxruntime session with its signature, warmed up and timed
before it takes traffic."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlinfra.serving.onnx_files import UnsafeModel, check_external_data
from mlinfra.serving.tensors import TensorSpec
from mlinfra.serving.zipmap import Labels, unzip

FEATURE_NAMES = "feature_names"


class ModelLoadError(Exception):
    pass


def load_session(path: Path, sha256: str | None = None, threads: int = 1,
                 log_severity: int = 3) -> tuple[Any, dict[str, Labels]]:
    """An onnxruntime session of the model at `path`, its ZipMap outputs served dense
    (mlinfra.serving.zipmap), and the class labels of each of those. `threads`: its
    intra-op threads (a server's workers use one each; a batch worker its share of the
    cores). `log_severity`: the least severe of onnxruntime's own messages it prints
    (3: errors; 4: fatal only, for a caller that reports a failed call itself)."""
    import onnxruntime as ort

    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ModelLoadError(f"{path} does not match its sha256 {sha256[:12]}")
    try:
        external = check_external_data(data, path.parent)
        unzipped = unzip(data)
    except UnsafeModel as err:
        raise ModelLoadError(f"{path.name}: {err}") from None
    except (ValueError, IndexError, UnicodeDecodeError):
        raise ModelLoadError(f"{path.name}: it is not an ONNX model (its protobuf cannot "
                             "be read)") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = log_severity
    providers = ["CPUExecutionProvider"]
    if not external:
        session = ort.InferenceSession(unzipped.model, options, providers=providers)
        return session, unzipped.labels
    # NOTE: onnxruntime reads the external data of a model given as bytes from the
    # working directory (the endpoint's folder, keys included); given its path, from
    # the model's folder, which the check above confined it to. A rewritten model is
    # given as a file beside the original for that reason, for as long as it loads.
    if not unzipped.labels:
        return ort.InferenceSession(str(path), options, providers=providers), {}
    try:
        handle, name = tempfile.mkstemp(suffix=".onnx", prefix=".dense-", dir=path.parent)
    except OSError as err:
        raise ModelLoadError(f"{path.name}: its ZipMap is served as a tensor through a "
                             f"copy beside it, which cannot be written: {err}") from None
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(unzipped.model)
        return ort.InferenceSession(name, options, providers=providers), unzipped.labels
    finally:
        os.unlink(name)


def _describe(items: Any) -> list[TensorSpec]:
    return [TensorSpec.of(i.name, i.type, tuple(d if isinstance(d, int) else None
                                                for d in i.shape)) for i in items]


def _feature_names(text: str | None, inputs: list[TensorSpec]) -> list[str] | None:
    """The model's `feature_names` metadata: a JSON list naming the columns of its single
    2-D input, so that tables (MLflow's dataframes, CSV) are matched by column name."""
    if text is None or len(inputs) != 1 or len(inputs[0].shape) != 2:
        return None
    try:
        names = json.loads(text)
    except ValueError:
        names = None
    width = inputs[0].shape[1]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(
            set(names)) != len(names) or (width is not None and len(names) != width):
        raise ModelLoadError(f"its metadata {FEATURE_NAMES} must be a JSON list of "
                             f"{width or 'the'} distinct column names of input "
                             f"{inputs[0].name}, got {text[:80]!r}")
    return names


@dataclass
class LoadedModel:
    """An onnxruntime session with its signature. Invariant: warmed up (answered one
    request) before any traffic reaches it."""

    name: str
    version: int
    sha256: str
    session: Any
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    latency_s: float = 0.0  # one warm-up request, measured
    features: list[str] | None = None  # the columns of a single 2-D input, in order
    labels: dict[str, Labels] = field(default_factory=dict)  # ZipMap outputs' columns

    @classmethod
    def load(cls, name: str, version: int, path: Path, sha256: str,
             threads: int = 1, log_severity: int = 3) -> LoadedModel:
        session, labels = load_session(path, sha256, threads, log_severity)
        inputs = _describe(session.get_inputs())
        metadata = session.get_modelmeta().custom_metadata_map
        model = cls(name, version, sha256, session, inputs, _describe(session.get_outputs()),
                    features=_feature_names(metadata.get(FEATURE_NAMES), inputs),
                    labels=labels)
        model.warm_up()
        return model

    @property
    def output_names(self) -> list[str]:
        return self._output_names

    def __post_init__(self) -> None:
        self._output_names = [o.name for o in self.outputs]
        self.input_specs = {i.name: i for i in self.inputs}
        self._binding = getattr(self.session, "_sess", None)
        self.batch_major = self.batchable()

    def warm_up(self) -> None:
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            shape = [d if d is not None else 1 for d in spec.shape]
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        self.run(feeds)
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            self.run(feeds)
            timings.append(time.perf_counter() - start)
            if timings[-1] > 0.05:
                break  # slow enough to know
        self.latency_s = sorted(timings)[len(timings) // 2]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Score `feeds`, already checked against the signature. onnxruntime's run()
        checks them again in Python, a third of a tiny model's call (10 µs against 7
        measured here), so the binding underneath is called when there is one."""
        if self._binding is None:
            return list(self.session.run(self._output_names, feeds))
        return list(self._binding.run(self._output_names, feeds, None))

    def batchable(self) -> bool:
        """Concatenating along the first axis is sound when every input and output is
        batch-major with fixed other dimensions."""
        return all(len(s.shape) >= 1 and s.shape[0] is None
                   and all(d is not None for d in s.shape[1:])
                   for s in self.inputs + self.outputs)
