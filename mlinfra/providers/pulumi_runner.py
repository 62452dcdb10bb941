"""Running a stack's Pulumi program through the Automation API.

Every call runs in a worker thread with an event loop of its own: Pulumi's Python SDK
drives its program with asyncio and collides with a loop already running in the
calling thread (pulumi/pulumi#11529, #8176). Pulumi's state lives in a `file://`
backend under .mlinfra/<stack>/pulumi unless the stack names `pulumi.backend`; its
secrets are encrypted with PULUMI_CONFIG_PASSPHRASE, which must be set: an empty
passphrase is never assumed.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mlinfra.errors import MlinfraError
from mlinfra.spec.model import Config

T = TypeVar("T")

INSTALL_HINT = ("install it (https://www.pulumi.com/docs/install/, e.g. "
                "`curl -fsSL https://get.pulumi.com | sh`) and put `pulumi` on PATH")


class PulumiUnavailable(MlinfraError):
    """What a docker or kubernetes stack needs to plan or apply is missing."""


def pulumi_cli() -> str | None:
    return shutil.which("pulumi")


def check_ready(config: Config, command: str) -> None:
    """Refuse before anything is read or written when Pulumi cannot run: one message
    naming everything missing and how to provide it."""
    missing = []
    if pulumi_cli() is None:
        missing.append(f"the Pulumi CLI is not installed: {INSTALL_HINT}")
    if not (os.environ.get("PULUMI_CONFIG_PASSPHRASE")
            or os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")):
        missing.append("PULUMI_CONFIG_PASSPHRASE is not set: export the passphrase that "
                       "encrypts this stack's secrets in Pulumi's state (or "
                       "PULUMI_CONFIG_PASSPHRASE_FILE naming a file that holds it)")
    if missing:
        stack = config.stack
        raise PulumiUnavailable(
            f"stack '{stack.name}' (provider {stack.provider}) applies through Pulumi, and "
            f"{command} cannot run: " + "; ".join(missing)
            + ". Nothing was changed. `mlinfra validate` and `mlinfra render` work "
            "without Pulumi.")


def backend_url(config: Config, state_dir: Path) -> str:
    settings = config.stack.settings.get("pulumi") or {}
    url = str(settings.get("backend") or "")
    if not url:
        return (state_dir / "pulumi").resolve().as_uri()
    if url.startswith("file://") and not url.startswith("file:///") and url != "file://~":
        # A path relative to the project, as every other path in mlinfra's YAML.
        return (config.root / url[len("file://"):]).resolve().as_uri()
    return url


def in_own_loop(work: Callable[[], T]) -> T:
    """Run `work` in a new thread with a new event loop; re-raise what it raised."""
    import asyncio

    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            result.append(work())
        except BaseException as err:
            failure.append(err)
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    thread = threading.Thread(target=target, name="mlinfra-pulumi", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


@dataclass(slots=True, init=False)
class Step:
    """One Pulumi resource that an operation changes: `key` is its name (the rendered
    object's key), `op` Pulumi's (create, update, replace, delete, same...), `diffs`
    the properties that change."""

    key: str
    op: str
    type: str
    diffs: list[str]

    def __init__(self, key: str, op: str, type: str, diffs: list[str]) -> None:
        self.key, self.op, self.type, self.diffs = key, op, type, diffs


def step_of(event: Any) -> Step | None:
    """The step a `ResourcePreEvent` announces (None for other events)."""
    pre = getattr(event, "resource_pre_event", None)
    if pre is None:
        return None
    meta = pre.metadata
    op = getattr(meta.op, "value", str(meta.op))
    return Step(meta.urn.rsplit("::", 1)[-1], str(op), meta.type, list(meta.diffs or []))


class PulumiStack:
    """One mlinfra stack's Pulumi stack: same name, program from the rendered objects."""

    def __init__(self, config: Config, state_dir: Path,
                 log: Callable[[str], None] = lambda _: None, run: str = "") -> None:
        """`run`: the Pulumi stack of that one job run (STACK-run-RUN), made and removed
        around the run, so a run never holds the stack's own lock while it trains."""
        self.config, self.state_dir, self.log = config, state_dir, log
        settings = config.stack.settings.get("pulumi") or {}
        self.name = str(settings.get("stack") or config.stack.name)
        if run:
            self.name = f"{self.name}-run-{run}"

    def _stack(self, program: Callable[[], None]) -> Any:
        from pulumi import automation as auto

        backend = backend_url(self.config, self.state_dir)
        if backend.startswith("file://"):
            Path(backend[len("file://"):]).mkdir(parents=True, exist_ok=True)
        work_dir = self.state_dir / "pulumi-workspace"
        work_dir.mkdir(parents=True, exist_ok=True)
        options = auto.LocalWorkspaceOptions(
            work_dir=str(work_dir), secrets_provider="passphrase",
            env_vars={"PULUMI_SKIP_UPDATE_CHECK": "true"},
            project_settings=auto.ProjectSettings(
                name=f"mlinfra-{self.config.name}", runtime="python",
                backend=auto.ProjectBackend(url=backend)))
        return auto.create_or_select_stack(stack_name=self.name,
                                           project_name=f"mlinfra-{self.config.name}",
                                           program=program, opts=options)

    def ensure_secret_config(self, program: Callable[[], None], names: list[str],
                             make: Callable[[str], str]) -> list[str]:
        """Generated secrets (endpoint keys) kept encrypted in the stack's config: made
        once, the same on every later apply. Returns the names made now."""
        from pulumi import automation as auto

        def work() -> list[str]:
            stack = self._stack(program)
            have = stack.get_all_config()
            made = []
            for name in names:
                key = f"mlinfra:{name}"
                if key not in have:
                    stack.set_config(key, auto.ConfigValue(make(name), secret=True))
                    made.append(name)
            return made

        return in_own_loop(work)

    def _events(self, steps: list[Step]) -> Callable[[Any], None]:
        def on_event(event: Any) -> None:
            step = step_of(event)
            if step is not None and step.op != "same":
                steps.append(step)
                self.log(f"pulumi: {step.op} {step.type} {step.key}")

        return on_event

    def preview(self, program: Callable[[], None]) -> list[Step]:
        steps: list[Step] = []
        in_own_loop(lambda: self._stack(program).preview(on_event=self._events(steps),
                                                         color="never"))
        return steps

    def up(self, program: Callable[[], None], targets: list[str]) -> dict[str, Any]:
        """Apply the program to the resources whose URNs are `targets` (and nothing
        else); returns the stack's outputs (secrets stay secret)."""
        steps: list[Step] = []

        def work() -> dict[str, Any]:
            stack = self._stack(program)
            result = stack.up(target=targets or None, on_event=self._events(steps),
                              on_output=lambda line: self.log(f"pulumi: {line.rstrip()}"),
                              color="never", show_secrets=False)
            return {k: v.value for k, v in result.outputs.items() if not v.secret}

        return in_own_loop(work)

    def refresh(self, program: Callable[[], None]) -> list[Step]:
        steps: list[Step] = []
        in_own_loop(lambda: self._stack(program).refresh(on_event=self._events(steps),
                                                         color="never", show_secrets=False))
        return steps

    def destroy(self, program: Callable[[], None], *, remove: bool = False) -> None:
        """Destroy what the stack holds; with `remove`, then the stack itself (a run's,
        once it ended)."""

        def work() -> None:
            stack = self._stack(program)
            stack.destroy(on_output=lambda line: self.log(f"pulumi: {line.rstrip()}"),
                          color="never", show_secrets=False)
            if remove:
                stack.workspace.remove_stack(self.name)

        in_own_loop(work)

    def urn(self, key: str, pulumi_type: str) -> str:
        """The URN Pulumi gives the resource named `key` (a rendered object's key)."""
        return f"urn:pulumi:{self.name}::mlinfra-{self.config.name}::{pulumi_type}::{key}"
