"""An inference request from body to answer: the deployment the traffic split picks,
the request decoded and checked against its model's signature, scored through its
batcher within its timeout, mirrored and captured, and the answer encoded."""

from __future__ import annotations

import asyncio
import random

import numpy as np

from mlinfra.serving import mlflow, v2
from mlinfra.serving.captures import Captures
from mlinfra.serving.errors import ClientError, InferenceFailed
from mlinfra.serving.http import JSON, Answer
from mlinfra.serving.metrics import Metrics
from mlinfra.serving.mirror import mirror
from mlinfra.serving.reload import Spawn
from mlinfra.serving.table import Deployment, Table
from mlinfra.serving.tensors import check_inputs, check_rows

MAX_PENDING = 1024  # requests waiting per deployment before 503


def pick(table: Table, pinned: str | None, version: str | None = None) -> Deployment:
    """The deployment that answers: the pinned one, or the traffic split's choice among
    those serving `version` (any version when None)."""
    if pinned is None and version is not None:
        chosen = table.pick_version(version)
        if chosen is None:
            raise ClientError(404, f"version {version} is not served; versions: "
                              f"{', '.join(table.versions()) or 'none'}")
        return chosen
    deployment = table.pick(pinned)
    if deployment is None:
        if pinned is not None:
            raise ClientError(404, f"no deployment '{pinned}'; deployments: "
                              f"{', '.join(table.deployments)}")
        raise ClientError(503, "no deployment takes traffic")
    if version is not None and str(deployment.model.version) != version:
        raise ClientError(404, f"deployment {pinned} serves version "
                          f"{deployment.model.version}, not {version}")
    return deployment


class Inference:
    def __init__(self, metrics: Metrics, captures: Captures, spawn: Spawn) -> None:
        self.metrics = metrics
        self.captures = captures
        self.spawn = spawn

    async def answer(self, table: Table, deployment: Deployment, body: bytes,
                     headers: dict[bytes, bytes], invocations: bool,
                     request_id: str = "") -> Answer:
        model = deployment.model
        try:
            if invocations:
                feeds, records = mlflow.decode(body, headers.get(b"content-type"), model)
            else:
                request = v2.decode(body, headers.get(v2.HEADER_LENGTH), model)
                feeds = request.feeds
            check_inputs(feeds, model.inputs)
            if model.batch_major:
                check_rows(feeds)
            outputs = await score(deployment, feeds)
        except ClientError as err:
            err.deployment = deployment.name
            raise
        if table.mirror:
            mirror(table, deployment, feeds, outputs, self.metrics, self.spawn)
        if table.collect_path and random.random() < table.collect_sample:
            self.captures.write(table, request_id, deployment, feeds, outputs)
        if invocations:
            return Answer(200, mlflow.encode(model.output_names, outputs, records), JSON,
                          deployment.headers, deployment.name)
        payload, content_type, extra = v2.encode(table.endpoint, str(model.version),
                                                 model.output_names, outputs, request)
        return Answer(200, payload, content_type,
                      deployment.headers + extra if extra else deployment.headers,
                      deployment.name)


async def score(deployment: Deployment, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs for checked `feeds`: 503 when too many wait, 504 past the
    deployment's timeout, InferenceFailed (a 500) when the model itself fails."""
    batcher = deployment.batcher
    if batcher.in_flight >= MAX_PENDING:
        raise ClientError(503, "overloaded: retry shortly")
    try:
        if batcher.inline:  # scored on the loop within max_batch_delay_ms; no timeout
            return await batcher.infer(feeds)  # could interrupt it there anyway
        async with asyncio.timeout(deployment.timeout_s):
            return await batcher.infer(feeds)
    except TimeoutError:
        raise ClientError(504, f"inference took longer than "
                          f"{deployment.timeout_s * 1000:g} ms") from None
    except Exception as err:
        raise InferenceFailed(deployment.name, err) from err
