"""Promotion: when a governed model has a new version, run its gates, compare it with
the alias' version, and move the alias when it wins. The first version that passes
the gates takes an empty alias. A rejected candidate is a decision, not a failure: it
stays registered, tagged with why.

With `rollout:`, a promoted version then goes live on the endpoint step by step (a
canary judged on each hold window: `endpoint/canary.py`); a breach puts the traffic
and the alias back, tags the version, and fails the apply. Every decision is recorded
in the audit log (`registry/decisions.py`), which `mlinfra history` reads.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from mlinfra.data import checks
from mlinfra.graph import address
from mlinfra.handler import Applied, BaseHandler, Context, ProviderError
from mlinfra.plan.model import Change, Observed
from mlinfra.registry.decisions import PROMOTION, DecisionLog, figures, trigger
from mlinfra.registry.models import GATES_TAG, ModelRegistry, ModelVersion
from mlinfra.runs.jobs import Resolver, artifact_store
from mlinfra.spec.model import Resource
from mlinfra.state.model import JournalEntry, ResourceState
from mlinfra.state.work import Step

REJECTED_TAG = "mlinfra.rejected"
# How a promoted version's rollout went, for people: "complete", "skipped",
# "interrupted", "inconclusive" (judged again by the next apply); "rolled back": apply
# never promotes it again (mlinfra models alias does, by hand). What recovery does is
# read from the journal, never from here.
ROLLOUT_TAG = "mlinfra.rollout"


class Verdict(NamedTuple):
    """`outcome`: promoted, kept (nothing to decide), rejected (lost the comparison) or
    gates failed. `gates`: every gate with whether it passed."""

    outcome: str
    reason: str
    gates: list[dict[str, Any]]

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"


def _gates(res: Resource, ctx: Context, candidate: ModelVersion) -> list[dict[str, Any]]:
    """Each gate of the promotion, judged on the candidate."""
    gates = res.spec.get("gates") or {}
    out: list[dict[str, Any]] = []
    for metric, bounds in (gates.get("metrics") or {}).items():
        value = candidate.metrics.get(metric)
        for side, sign in (("min", ">="), ("max", "<=")):
            if side not in bounds:
                continue
            gate = f"{metric} {sign} {bounds[side]}"
            if not isinstance(value, int | float):
                out.append({"gate": gate, "passed": False,
                            "detail": f"{candidate.ref} has no metric {metric}"})
                continue
            passed = value >= bounds[side] if side == "min" else value <= bounds[side]
            worse = "<" if side == "min" else ">"
            shown, limit = figures(value, bounds[side])
            detail = f"{metric} {shown}" + ("" if passed else f" {worse} {side} {limit}")
            out.append({"gate": gate, "passed": passed, "detail": detail})
    resolver = Resolver(ctx)
    for text in gates.get("data") or []:
        data = resolver.data(res, str(text))
        asset = ctx.config.get("Data", data.name)
        expectations = (asset.spec.get("expectations") or []) if asset else []
        gate = f"data {data.label} expectations"
        if not expectations:
            out.append({"gate": gate, "passed": True, "detail": "no expectations declared"})
            continue
        try:  # the verdict recorded for this content, or checked now
            checks.DataChecks(ctx.store).require(
                data.name, data.sha256, data.path,
                str(asset.spec.get("format", "csv")) if asset else "csv", expectations,
                data.label)
        except checks.DataCheckFailed as err:
            out.append({"gate": gate, "passed": False, "detail": err.message})
            continue
        out.append({"gate": gate, "passed": True,
                    "detail": f"{len(expectations)} expectations passed"})
    return out


def gone(version: ModelVersion) -> str:
    return f"{version.ref}'s file is gone from the artifact store"


def judge(res: Resource, ctx: Context, candidate: ModelVersion,
          champion: ModelVersion | None, lost: ModelVersion | None = None) -> Verdict:
    """`lost`: the alias' version when its file is gone (then `champion` is None): it
    can be served no more, so it is not compared, and any candidate that passes the
    gates takes its place."""
    gates = _gates(res, ctx, candidate)
    failed = [g for g in gates if not g["passed"]]
    if failed:
        return Verdict("gates failed", f"gates failed: {failed[0]['detail']}", gates)
    earlier = candidate.tags.get(ROLLOUT_TAG)
    if earlier == "rolled back":
        return Verdict("kept", f"{candidate.ref}'s rollout was {earlier} before "
                       f"({candidate.tags.get(REJECTED_TAG, '')}); mlinfra models alias "
                       "promotes it by hand", gates)
    if champion is None and lost is not None:
        return Verdict("promoted", f"{candidate.ref} passed the gates; champion "
                       f"{gone(lost)}", gates)
    if champion is None:
        return Verdict("promoted", f"{candidate.ref} passed the gates and the alias was "
                       "empty", gates)
    if champion.version == candidate.version:
        alias = str(res.spec.get("alias", "champion"))
        why = ModelRegistry(ctx.store).alias_reason(candidate.name, alias)
        return Verdict("kept", f"{candidate.ref} is already the alias' version"
                       + (f" ({why})" if why else ""), gates)
    compare = res.spec.get("compare") or {}
    metric = compare.get("metric")
    if metric is None:
        return Verdict("promoted", f"{candidate.ref} passed the gates (no comparison "
                       "asked)", gates)
    new, old = candidate.metrics.get(metric), champion.metrics.get(metric)
    if not isinstance(new, int | float) or not isinstance(old, int | float):
        return Verdict("rejected", f"{metric} is missing on {candidate.ref} or "
                       f"{champion.ref}", gates)
    delta = float(compare.get("min_delta", 0))
    maximize = compare.get("direction", "max") == "max"
    gain = new - old if maximize else old - new
    # Better means a gain, and at least min_delta of it: a tie never moves the alias.
    shown_new, shown_old = figures(new, old)
    if gain > 0 and gain >= delta:
        return Verdict("promoted", f"{metric} {shown_new} beats champion {champion.ref}'s "
                       f"{shown_old} by {figures(gain)[0]} (at least {delta:g} needed)",
                       gates)
    if gain == 0:
        return Verdict("rejected", f"{metric} {shown_new} = champion {shown_old}: a tie "
                       "never wins", gates)
    worse, bound = ("<", f"+ {delta:g}") if maximize else (">", f"- {delta:g}")
    return Verdict("rejected", f"{metric} {shown_new} {worse} champion {shown_old} {bound}",
                   gates)


def _on_the_same_data(res: Resource, ctx: Context, candidate: ModelVersion,
                      champion: ModelVersion | None) -> tuple[ModelVersion | None, str]:
    """The champion as it scores on the data the candidate was evaluated on: metrics
    from other data would compare apples with oranges."""
    where = candidate.metrics.get("evaluated_on")
    if champion is None or where is None or champion.metrics.get("evaluated_on") == where:
        return champion, ""
    from mlinfra.registry.evaluate import ModelInvalid
    from mlinfra.registry.register import ModelHandler

    model = ctx.config.get("Model", str(res.spec["model"]))
    assert model is not None  # validated
    try:
        metrics = ModelHandler().evaluate(model, ctx, artifact_store(ctx).path(champion.sha256))
    except ModelInvalid as err:
        raise ProviderError(f"promotion.{res.name}", f"cannot evaluate the champion "
                            f"{champion.ref} on {where}: {err.message}") from err
    rescored = ModelVersion(**{**vars(champion), "metrics": metrics})
    return rescored, f" (champion evaluated again on {where})"


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


class PromotionHandler(BaseHandler):
    def read(self, state: ResourceState, ctx: Context) -> Observed:
        """A model version registered since the last decision (an apply with --target
        model.X) was never judged, and an alias whose version's file is gone can be
        served no more: drift, repaired by judging the model's version."""
        model = str(state.attributes.get("model"))
        judged = state.outputs.get("candidate")
        if state.outputs.get("outcome") == "pending":
            return Observed(True, f"{judged} is pending: its rollout saw too little traffic "
                            "to be judged; this apply judges it again", update=True)
        have = ctx.store.get(address("Model", model))
        now = have.outputs.get("version") if have is not None else None
        if judged and now is not None and judged != f"{model}:{now}":
            return Observed(True, f"model.{model} is now {model}:{now}; the promotion last "
                            f"judged {judged}", update=True)
        registry = ModelRegistry(ctx.writer)
        alias = str(state.attributes.get("alias") or "champion")
        current = registry.aliases(model).get(alias)
        champion = registry.get(model, current) if current is not None else None
        if champion is not None and now is not None and champion.version != int(now) and (
                not artifact_store(ctx).exists(champion.sha256)):
            return Observed(True, f"{model}@{alias} is {gone(champion)}", update=True)
        return Observed()

    @staticmethod
    def _candidate(change: Change, ctx: Context, registry: ModelRegistry,
                   model: str) -> ModelVersion:
        """The version this apply resolved for the model (the one its plan announced),
        not the highest number: reverting a change brings back an older version."""
        state = ctx.store.get(address("Model", model))
        version = state.outputs.get("version") if state else None
        found = registry.get(model, int(version)) if version is not None else None
        if found is None:
            raise ProviderError(change.address, f"model.{model} has no version in this "
                                "state to promote: apply the model first")
        return found

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        model = ctx.config.get("Model", str(res.spec["model"]))
        return {"candidate_source": ctx.facts(model) if model else {}}

    def create(self, change: Change, ctx: Context) -> Applied:
        res = ctx.config.get("Promotion", change.name)
        assert res is not None
        registry = ModelRegistry(ctx.writer)
        model, alias = str(res.spec["model"]), str(res.spec.get("alias", "champion"))
        candidate = self._candidate(change, ctx, registry, model)
        current = registry.aliases(model).get(alias)
        champion = registry.get(model, current) if current is not None else None
        lost = None
        if champion is not None and champion.version != candidate.version and not (
                artifact_store(ctx).exists(champion.sha256)):
            lost, champion = champion, None  # it cannot be served: nothing to defend
        judged, note = _on_the_same_data(res, ctx, candidate, champion)
        verdict = judge(res, ctx, candidate, judged, lost)
        reason = verdict.reason + note
        if lost is not None and not verdict.promoted:
            reason += (f"; {model}@{alias} is still {lost.ref}, whose file is gone from the "
                       f"artifact store: mlinfra models alias {model}@{alias} VERSION "
                       "points it at a version that has one")
        detail = self._detail(res, ctx, candidate, judged, current, verdict, reason)
        if ctx.work is not None:  # what recovery needs, should the rollout be cut short
            ctx.work.step("decided", {"model": model, "alias": alias,
                                      "candidate": candidate.version, "from": current,
                                      "outcome": verdict.outcome, "reason": reason})
        if verdict.outcome == "gates failed":
            # NOTE: kept registered for the record, but never served as `latest`.
            registry.set_tags(model, candidate.version, {GATES_TAG: "failed",
                                                         REJECTED_TAG: reason})
        elif verdict.outcome == "rejected":
            registry.set_tags(model, candidate.version, {REJECTED_TAG: reason})
        pending = False
        if verdict.promoted:
            detail["to"] = candidate.version
            rollout = res.spec.get("rollout")
            if rollout and champion is not None:
                # The alias stays on the champion while the candidate is judged on live
                # traffic: it moves with the promotion's change, once the rollout is done.
                pending = self._roll_out(change, ctx, res, candidate, champion, detail)
            if not pending:
                registry.set_alias(model, alias, candidate.version,
                                   f"promoted by promotion.{res.name}: {reason}")
            else:
                reason = str(detail["reason"])
        DecisionLog(ctx.writer).record(change.address, PROMOTION, detail)
        if not verdict.promoted and verdict.outcome in ("gates failed", "rejected"):
            # (a promotion's alias move announces itself: model.promoted)
            ctx.writer.emit("model.rejected", f"model.{model}", {
                "model": model, "candidate": candidate.version, "champion": current,
                "outcome": verdict.outcome, "reason": reason, "see": "mlinfra history"})
        promoted = verdict.promoted and not pending
        outcome = "pending" if pending else verdict.outcome
        kept = champion or lost
        now = candidate.ref if promoted else (kept.ref if kept else "nothing")
        ctx.log(f"{change.address}: {'promoted' if promoted else 'kept'} "
                f"{model}@{alias} -> {now} ({reason})")
        return Applied({"decision": "promoted" if promoted else "kept",
                        "outcome": outcome, "reason": reason,
                        "candidate": candidate.ref, "alias": f"{model}@{alias}",
                        "version": candidate.version if promoted else current,
                        "rollout": detail.get("rollout", {}).get("status")})

    def recover(self, entry: JournalEntry, steps: list[Step], ctx: Context) -> str:
        """A promotion cut short (its apply killed): resumed when its rollout completed
        (the alias moves, as the promotion would have moved it), else undone (the alias
        never moved; the candidate is judged again by the next apply). Read from the
        operation's steps in the journal, never from tags."""
        decided = next((s.data for s in steps if s.name == "decided"), None)
        if decided is None or decided.get("outcome") != "promoted":
            return "nothing was decided yet: judged again"
        registry = ModelRegistry(ctx.writer)
        model, alias = str(decided["model"]), str(decided["alias"])
        candidate = registry.get(model, int(decided["candidate"]))
        if candidate is None:
            return f"{model}:{decided['candidate']} is gone: nothing to resume"
        ended = [s.data for s in steps if s.name == "rollout-ended"]
        status = str(ended[-1].get("status")) if ended else ""
        if any(s.name == "rollout-complete" for s in steps):  # the endpoint serves it
            status = "complete"
        if status in ("complete", "skipped"):
            registry.set_tags(model, candidate.version, {ROLLOUT_TAG: status})
            registry.set_alias(model, alias, candidate.version,
                               f"promoted by {entry.address} (its rollout completed before "
                               f"the apply was cut short): {decided.get('reason', '')}")
            DecisionLog(ctx.writer).record(entry.address, PROMOTION, {
                "promotion": entry.address.partition(".")[2], "model": model, "alias": alias,
                "candidate": candidate.version, "from": decided.get("from"),
                "to": candidate.version, "outcome": "promoted",
                "reason": f"{decided.get('reason', '')} (resumed after a crash)",
                "trigger": trigger(ctx.store.command)})
            ctx.log(f"{entry.address}: resumed: {model}@{alias} -> {candidate.ref}")
            return f"resumed: {model}@{alias} -> {candidate.ref}"
        registry.set_tags(model, candidate.version, {ROLLOUT_TAG: "interrupted"})
        ctx.log(f"{entry.address}: the rollout of {candidate.ref} was cut short: "
                f"{model}@{alias} stays on {decided.get('from')}; judged again")
        return f"undone: the rollout of {candidate.ref} was cut short"

    @staticmethod
    def _detail(res: Resource, ctx: Context, candidate: ModelVersion,
                champion: ModelVersion | None, current: int | None, verdict: Verdict,
                reason: str) -> dict[str, Any]:
        """The decision as `mlinfra history` and the CI report show it."""
        from mlinfra.runs.snapshot import git_info

        git = git_info(ctx.root)
        return {"promotion": res.name, "model": candidate.name,
                "alias": str(res.spec.get("alias", "champion")),
                "candidate": candidate.version, "from": current, "to": current,
                "champion": champion.version if champion else None,
                "outcome": verdict.outcome, "reason": reason,
                "compare": res.spec.get("compare") or {},
                "metrics": {"candidate": _numbers(candidate.metrics),
                            "champion": _numbers(champion.metrics) if champion else {}},
                "evaluated_on": candidate.metrics.get("evaluated_on"),
                "gates": [{"gate": g["gate"], "passed": g["passed"]} for g in verdict.gates],
                "commit": git.get("commit"), "dirty": git.get("dirty"),
                "trigger": trigger(ctx.store.command)}

    @staticmethod
    def _roll_out(change: Change, ctx: Context, res: Resource, candidate: ModelVersion,
                  champion: ModelVersion, detail: dict[str, Any]) -> bool:
        """Roll the promoted candidate out, each step journaled; True when it could not
        be judged (too little traffic) and waits. The alias is still on the champion: on
        a breach the decision and the candidate's tags are kept, the alias stays, and
        the apply fails."""
        model, alias = candidate.name, str(res.spec.get("alias", "champion"))
        settings = dict(res.spec["rollout"])
        assert ctx.provider is not None
        record = ctx.provider.roll_out(ctx, settings, alias, candidate, champion,
                                       lambda line: ctx.log(f"{change.address}: {line}"))
        if ctx.work is not None:
            ctx.work.step("rollout-ended", {"status": record["status"],
                                            "why": record.get("why", "")})
        detail["rollout"] = record
        registry = ModelRegistry(ctx.writer)
        if record["status"] in ("complete", "skipped"):
            registry.set_tags(model, candidate.version, {ROLLOUT_TAG: record["status"]})
            if record["status"] == "skipped":
                ctx.log(f"{change.address}: no rollout: {record['why']}")
            return False
        if record["status"] == "inconclusive":
            # Not a rejection: the traffic is back, the candidate waits to be judged.
            why = (f"rollout inconclusive: {record['why']}; {candidate.ref} is pending: the "
                   "next apply or ci run judges it again (rollout.on_no_traffic: promote "
                   "promotes it unjudged)")
            registry.set_tags(model, candidate.version, {ROLLOUT_TAG: "inconclusive"})
            detail.update(outcome="pending", to=champion.version, reason=why)
            ctx.log(f"{change.address}: {why}")
            return True
        why = f"rollout {record['status']}: {record['why']}"
        # Kept although the change fails: the decision is the rollback itself.
        kept = ctx.work.always() if ctx.work is not None else ctx.store
        ModelRegistry(kept).set_tags(model, candidate.version,
                                     {REJECTED_TAG: why, ROLLOUT_TAG: record["status"]})
        detail.update(outcome=record["status"], to=champion.version, reason=why)
        # (the endpoint's rollback announces itself: rollout.rolled_back)
        DecisionLog(kept).record(change.address, PROMOTION, detail)
        raise ProviderError(change.address, f"{why}; traffic and {model}@{alias} are back "
                            f"on {champion.ref}")
