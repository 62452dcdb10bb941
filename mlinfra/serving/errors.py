"""How a request ends when it gets no answer from a model: a client's mistake, with its
HTTP status (never a 500), or a model that failed on a request that passed every check.
"""

from __future__ import annotations


class ClientError(Exception):
    """A 4xx (or 503/504) with its reason. `deployment` is set once a deployment was
    chosen, so metrics count the error there; `headers` go with the answer."""

    def __init__(self, status: int, message: str, deployment: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.deployment = deployment
        self.headers = headers or []


class InferenceFailed(Exception):
    """The model failed on a request that passed every check: a 500 of `deployment`."""

    def __init__(self, deployment: str, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.deployment = deployment
