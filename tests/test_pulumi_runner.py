"""The Automation API runner without the CLI: every Pulumi call in a
thread with its own event loop, the backend's location, preview events named back to
the rendered objects."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mlinfra.providers.manifests import RenderedObject
from mlinfra.providers.pulumi_runner import PulumiStack, backend_url, in_own_loop, step_of
from mlinfra.spec import load
from tests.test_pulumi_programs import run

LOOPS: list[tuple[int, asyncio.AbstractEventLoop]] = []


def _program() -> None:
    import threading

    import pulumi_docker as docker

    LOOPS.append((threading.get_ident(), asyncio.get_event_loop()))
    docker.Network("network", name="n")


def test_a_program_runs_in_a_thread_and_loop_of_its_own() -> None:
    """Pulumi's SDK drives its program on the thread's event loop, which collides with
    a caller's running loop (pulumi/pulumi#11529, #8176): the runner never shares one."""
    import threading

    async def caller_with_a_loop() -> None:
        LOOPS.clear()
        made = run(_program, "docker")  # through in_own_loop
        assert made.resources == {"network": ("docker:index/network:Network",
                                              {"name": "n"})}
        (thread, loop), = LOOPS
        assert thread != threading.get_ident()
        assert loop is not asyncio.get_running_loop() and loop.is_closed()
        await asyncio.sleep(0)  # the caller's loop goes on

    asyncio.run(caller_with_a_loop())


def test_in_own_loop_gives_back_what_the_work_raised() -> None:
    def fail() -> None:
        raise ValueError("from the worker")

    with pytest.raises(ValueError, match="from the worker"):
        in_own_loop(fail)
    assert in_own_loop(lambda: asyncio.get_event_loop().run_until_complete(
        asyncio.sleep(0, "done"))) == "done"


def test_the_backend_is_a_file_folder_of_the_stack_unless_named(
        quickstart: Path) -> None:
    stack_file = quickstart / "stacks" / "kubernetes.yaml"
    config = load(quickstart, "kubernetes")
    state = quickstart / ".mlinfra" / "kubernetes"
    assert backend_url(config, state) == (quickstart / ".mlinfra" / "kubernetes" /
                                          "pulumi").as_uri()
    stack_file.write_text(stack_file.read_text().replace(
        "pulumi:\n  backend: file://.mlinfra/kubernetes/pulumi\n", ""))
    config = load(quickstart, "kubernetes")
    assert backend_url(config, state) == (state / "pulumi").resolve().as_uri()
    stack_file.write_text(stack_file.read_text() + "pulumi:\n  backend: s3://bucket/mlinfra\n")
    assert backend_url(load(quickstart, "kubernetes"), state) == "s3://bucket/mlinfra"


def test_preview_events_name_the_rendered_objects(quickstart: Path) -> None:
    from pulumi.automation import events

    stack = PulumiStack(load(quickstart, "kubernetes"), quickstart / ".mlinfra" / "k")
    urn = ("urn:pulumi:kubernetes::mlinfra-quickstart::"
           "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute::httproute-fraud-api")
    meta = events.StepEventMetadata(op=events.OpType.UPDATE, urn=urn,
                                    type="kubernetes:gateway.networking.k8s.io/v1:HTTPRoute",
                                    provider="", diffs=["spec"])
    event = events.EngineEvent(sequence=1, timestamp=0,
                               resource_pre_event=events.ResourcePreEvent(metadata=meta))
    step = step_of(event)
    assert step is not None and (step.key, step.op, step.diffs) == (
        "httproute-fraud-api", "update", ["spec"])
    assert step_of(events.EngineEvent(sequence=2, timestamp=0)) is None
    assert stack.urn("httproute-fraud-api", meta.type) == urn
    route = RenderedObject("httproute-fraud-api", "endpoint.fraud-api", "HTTPRoute", {})
    assert route.key == step.key


def test_a_published_port_becomes_the_endpoints_url() -> None:
    from mlinfra.providers.pulumi_stack import published_url

    ports = [{"internal": 8080, "external": 32768, "ip": "127.0.0.1", "protocol": "tcp"}]
    assert published_url({"container-api": ports}) == "http://127.0.0.1:32768"
    assert published_url({"service-api-blue": "10.0.0.7"}) is None
