"""`mlinfra endpoints` on docker and kubernetes stacks: the endpoint's URL is
the one apply mapped back from Pulumi's outputs into mlinfra's state; where no URL is
known (kubernetes) the command says how to make one. The container itself is scored in
tests/test_docker_integration.py; here a plain HTTP server stands at the URL."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import Result, onnx_model
from tests.stacks import record_endpoint

SERVING = ("kind: Endpoint\nname: api\ncompute: cpu\ndeployments: [{name: blue, model: m}]\n"
           "traffic: {blue: 100}\n---\nkind: Model\nname: m\nfrom: {path: m.onnx}\n")
ATTRIBUTES = {"deployments": [{"name": "blue", "model": "m"}], "traffic": {"blue": 100},
              "auth": "key"}
STACKS = {"stacks/docker.yaml": "kind: Stack\nname: docker\nprovider: docker\n",
          "stacks/kubernetes.yaml": "kind: Stack\nname: kubernetes\nprovider: kubernetes\n"
                                    "kubernetes: {context: kind-ml, namespace: team}\n"}


@pytest.fixture
def server() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """An HTTP server answering as the endpoint's container would; records the path and
    the authorization header of each request."""
    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: dict[str, object]) -> None:
            seen.append((self.path, self.headers.get("authorization", "")))
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer({})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self._answer({"outputs": [{"name": "label", "data": [1, 0]}]})

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_on_docker_list_and_invoke_use_the_published_url_in_the_state(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path,
        server: tuple[str, list[tuple[str, str]]]) -> None:
    url, seen = server
    root = project({"serving.yaml": SERVING, "m.onnx": onnx_model(), **STACKS})
    record_endpoint(root, "docker", "api", ATTRIBUTES, {"url": url, "pulumi": {
        "container-api": [{"internal": 8080, "external": int(url.rsplit(":", 1)[1]),
                           "ip": "127.0.0.1"}]}})
    listed = cli("endpoints", "list", "-s", "docker")
    assert listed.code == 0, listed.err
    assert url in listed.out and "ready" in listed.out and "blue=m" in listed.out
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": [{"name": "features", "shape": [1, 2],
                                               "datatype": "FP32", "data": [1.0, 0.0]}]}))
    keyless = cli("endpoints", "invoke", "api", "-s", "docker", "--data", str(request))
    assert keyless.code == 1
    assert "pulumi config get mlinfra:api-keys --stack docker" in keyless.err
    invoked = cli("endpoints", "invoke", "api", "-s", "docker", "--data", str(request),
                  "--key", "mlk_k")
    assert invoked.code == 0, invoked.err
    assert json.loads(invoked.out)["outputs"][0]["data"] == [1, 0]
    assert seen[-1] == ("/v2/models/api/infer", "Bearer mlk_k")
    shown = json.loads(cli("endpoints", "show", "api", "-s", "docker").out)
    assert (shown["url"], shown["health"]) == (url, "ready")
    refused = cli("endpoints", "rollout", "api", "-s", "docker", "--to", "blue")
    assert refused.code == 1 and "change `traffic` in the YAML and apply" in refused.err


def test_on_kubernetes_invoke_says_how_to_reach_the_endpoint(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path,
        server: tuple[str, list[tuple[str, str]]]) -> None:
    url, seen = server
    root = project({"serving.yaml": SERVING, "m.onnx": onnx_model(), **STACKS})
    record_endpoint(root, "kubernetes", "api", ATTRIBUTES,
                    {"pulumi": {"service-api-blue": "10.96.0.7"}})
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": [[1.0, 0.0]]}))
    unknown = cli("endpoints", "invoke", "api", "-s", "kubernetes", "--data", str(request),
                  "--key", "mlk_k")
    assert unknown.code == 1
    assert ("kubectl --context kind-ml -n team port-forward svc/api-blue 8080:80` and pass "
            "--url http://127.0.0.1:8080") in unknown.err
    listed = cli("endpoints", "list", "-s", "kubernetes")
    assert listed.code == 0 and "unknown: endpoint api runs on kubernetes" in listed.out
    # With the port-forward's (here the stand-in's) address, it is invoked.
    invoked = cli("endpoints", "invoke", "api", "-s", "kubernetes", "--data", str(request),
                  "--key", "mlk_k", "--url", url)
    assert invoked.code == 0, invoked.err
    assert seen[-1] == ("/invocations", "Bearer mlk_k")
