"""A real S3 API server for the tests: moto's server mode (ThreadedMotoServer) on
127.0.0.1 and a free port, which s3fs and botocore talk to over HTTP as they would to
AWS (`endpoint_url`); stopped at the end. `FlakyProxy` stands between a client and it
and cuts the first upload it carries half way, as a dropped connection would."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import requests

ACCESS_KEY = "mlinfra-test-key"
SECRET_KEY = "mlinfra-test-secret"  # a throwaway server's


class S3Server:
    """One moto server for the session; `bucket()` makes a fresh bucket per test."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def start(self) -> None:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()

    def client(self, **kwargs: Any) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=kwargs.pop("endpoint_url", self.url),
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            region_name="us-east-1", **kwargs)

    def bucket(self, prefix: str = "b") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    @contextmanager
    def enforcing_credentials(self) -> Iterator[tuple[str, str]]:
        """Within it, the server checks signatures (moto's IAM authentication): yields
        the access key and secret of a user allowed everything on S3."""
        requests.post(f"{self.url}/moto-api/reset-auth", data=b"3", timeout=10)
        iam = _iam(self.url)
        user = f"u{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
            '"Action": "*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        try:
            yield key["AccessKeyId"], key["SecretAccessKey"]
        finally:
            requests.post(f"{self.url}/moto-api/reset-auth", data=b"inf", timeout=10)


def _iam(url: str) -> Any:
    import boto3

    return boto3.client("iam", endpoint_url=url, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1")


def credentials_env() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1"}


class FlakyProxy:
    """A TCP proxy on `host` (127.0.0.1, or a Docker network's gateway so that its
    containers reach a server on 127.0.0.1) to `target`. The first `cuts` connections
    that carry a PUT are closed after `after_bytes` of the request reached the server,
    so the server sees a request that stops half way; later ones pass whole."""

    def __init__(self, target: tuple[str, int], cuts: int = 1, after_bytes: int = 2048,
                 host: str = "127.0.0.1") -> None:
        self.target, self.cuts, self.after_bytes = target, cuts, after_bytes
        self.cut = 0
        self.host = host
        self.heads: list[bytes] = []  # the first bytes of each request that passed
        self._sock = socket.socket()
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(self.target, timeout=30)
        done = threading.Event()

        def back() -> None:
            try:
                while chunk := upstream.recv(65536):
                    conn.sendall(chunk)
            except OSError:
                pass
            finally:
                done.set()
                _close(conn)

        threading.Thread(target=back, daemon=True).start()
        sent, cutting = 0, None
        try:
            while chunk := conn.recv(65536):
                if cutting is None:
                    self.heads.append(chunk[:4096])
                    with self._lock:
                        cutting = chunk.startswith(b"PUT ") and self.cut < self.cuts
                        if cutting:
                            self.cut += 1
                if cutting and sent + len(chunk) >= self.after_bytes:
                    upstream.sendall(chunk[: max(0, self.after_bytes - sent)])
                    break
                upstream.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            _close(upstream)
            _close(conn)
            done.wait(timeout=5)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def free_port_refusing() -> str:
    """An address where nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"

