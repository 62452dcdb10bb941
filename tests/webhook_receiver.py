"""A webhook receiver on 127.0.0.1, as a team would run one: every request's signature
is verified with the `standardwebhooks` package and its body read as a CloudEvent with
the `cloudevents` SDK. It answers from a script of statuses (then 200), and keeps what
it accepted."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    id: str
    type: str
    subject: str | None
    data: dict[str, Any]
    at: float
    headers: dict[str, str]


class Receiver:
    def __init__(self, secret: str, script: list[int] | None = None,
                 retry_after: str | None = None, port: int = 0) -> None:
        self.secret = secret
        self.script = list(script or [])
        self.retry_after = retry_after
        self.accepted: list[Received] = []
        self.tries: Counter[str] = Counter()
        self.bad: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = receiver.handle(dict(self.headers.items()), body)
                self.send_response(status)
                if status in (429, 503) and receiver.retry_after:
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            try:
                Webhook(self.secret).verify(body, headers)
            except WebhookVerificationError as err:
                self.bad.append(str(err))
                return 400
            event = from_http_event(HTTPMessage(headers={k.lower(): v for k, v in
                                                         headers.items()}, body=body))
            event_id = headers.get("webhook-id") or headers.get("Webhook-Id") or ""
            assert event_id == event.get_id()
            self.tries[event_id] += 1
            if self.script:
                return self.script.pop(0)
            data = event.get_data()
            self.accepted.append(Received(
                event_id, event.get_type(), event.get_subject(),
                data if isinstance(data, dict) else json.loads(str(data)), time.time(),
                headers))
            return 200

    def of_type(self, event_type: str) -> list[Received]:
        with self.lock:
            return [r for r in self.accepted if r.type == event_type]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
